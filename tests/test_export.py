"""NIfTI and DICOM SEG exports keep the source geometry: read them back and compare voxel world positions."""

from __future__ import annotations

import json
import random
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from segmenter.export import ExportError, save_dicom_seg, save_nifti
from segmenter.study import Geometry, Study
from segmenter.study_io import load_study

ROWS, COLS, SLICES = 12, 10, 5
ROW_SPACING, COL_SPACING, STEP = 0.7, 0.8, 2.5
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
CHAOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "chaos_mr_t2_3d"


def _slice(index: int, orientation: list[float], study_uid: str, series_uid: str, frame_uid: str) -> Dataset:
    """One CT slice of an axial series; slice ``index`` lies ``index * STEP`` mm along the normal."""
    normal = np.cross(orientation[:3], orientation[3:])
    position = np.array([-60.0, 30.0, -100.0]) + index * STEP * normal
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "PHANTOM-1", "19700101", "O"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study_uid, "20260101", "120000", "1"
    ds.ReferringPhysicianName, ds.AccessionNumber = "", "ACC1"
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "CT", series_uid, 3, index + 1
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
    ds.Manufacturer = "pytest"
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.PixelSpacing, ds.SliceThickness = [ROW_SPACING, COL_SPACING], STEP
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = ROWS, COLS, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024.0, 1.0
    ds.PixelData = np.full((ROWS, COLS), 1024 + 40 + index, dtype=np.int16).tobytes()
    return ds


def _load(path: Path) -> nib.Nifti1Image:
    image = nib.load(str(path))
    assert isinstance(image, nib.Nifti1Image)
    return image


def _affine_from_dicom(headers: list[Dataset]) -> np.ndarray:
    """(slice, row, col) -> RAS mm from the headers alone (DICOM's LPS with x and y negated)."""
    orientation = np.array(headers[0].ImageOrientationPatient, dtype=float)
    first, second = (np.array(ds.ImagePositionPatient, dtype=float) for ds in headers[:2])
    lps = np.eye(4)
    lps[:3, 0] = second - first
    lps[:3, 1] = orientation[3:] * float(headers[0].PixelSpacing[0])
    lps[:3, 2] = orientation[:3] * float(headers[0].PixelSpacing[1])
    lps[:3, 3] = first
    return LPS_TO_RAS @ lps


def _dicom_world(headers: list[Dataset], s: int, r: int, c: int) -> np.ndarray:
    """RAS mm of pixel (r, c) of slice s, from that slice's own position and the DICOM pixel formula."""
    ds = headers[s]
    orientation = np.array(ds.ImageOrientationPatient, dtype=float)
    lps = (np.array(ds.ImagePositionPatient, dtype=float) + r * float(ds.PixelSpacing[0]) * orientation[3:]
           + c * float(ds.PixelSpacing[1]) * orientation[:3])
    return np.array([-lps[0], -lps[1], lps[2]])


AXIAL, FLIPPED_X = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


@pytest.fixture(params=[(AXIAL, "hand"), (FLIPPED_X, "hand"), (AXIAL, "loader"), (FLIPPED_X, "loader")],
                ids=["axial-by-hand", "flipped-x-by-hand", "axial-loaded", "flipped-x-loaded"])
def series(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Study, list[Dataset]]:
    """A CT series written under shuffled file names, and its Study: built by hand following the contract
    of segmenter/study.py, or made by ``load_study``. The headers returned are the test's own reading
    (sorted along the normal here), the reference the exports are checked against."""
    orientation, source = request.param
    uids = generate_uid(), generate_uid(), generate_uid()
    names = [f"IM{n:04d}.dcm" for n in random.Random(7).sample(range(1000), SLICES)]
    folder = tmp_path / "series"
    folder.mkdir()
    for index, name in enumerate(names):
        _slice(index, orientation, *uids).save_as(folder / name, enforce_file_format=True)
    # read in file-name order, which is not the slice order
    datasets: list[Dataset] = [pydicom.dcmread(path) for path in sorted(folder.iterdir())]
    normal = np.cross(orientation[:3], orientation[3:])
    datasets.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, dtype=float))))
    values = np.stack([ds.pixel_array.astype(np.float32) - 1024 for ds in datasets])
    for ds in datasets:
        del ds.PixelData
    geometry = Geometry(pixel_spacing=(ROW_SPACING, COL_SPACING), slice_spacing=STEP, modality="CT",
                        affine=tuple(tuple(float(v) for v in row) for row in _affine_from_dicom(datasets)))
    grey = np.clip(values - values.min(), 0, 255).astype(np.uint8)
    study = Study(slices=np.repeat(grey[..., None], 3, axis=3), geometry=geometry, kind="dicom", values=values,
                  dicom_headers=datasets)
    if source == "loader":
        study = load_study(folder)
        assert np.allclose(study.geometry.affine_array(), geometry.affine_array())  # type: ignore[arg-type]
    return study, datasets


def _masks() -> dict[str, np.ndarray]:
    liver = np.zeros((SLICES, ROWS, COLS), dtype=bool)
    liver[1, 2:5, 3:7] = True
    liver[3, 8, 1] = True  # one voxel off-centre: catches a row/col swap or flip
    tumor = np.zeros_like(liver)
    tumor[3, 6:9, 0:2] = True
    return {"liver": liver, "brain tumor": tumor, "nothing": np.zeros_like(liver)}


def test_nifti_of_dicom_lands_on_the_dicom_voxels(series, tmp_path: Path) -> None:
    study, headers = series
    mask = _masks()["liver"]
    path = save_nifti(mask, study.geometry, tmp_path / "liver.nii.gz")
    image = _load(path)
    data = np.asarray(image.dataobj)
    assert data.dtype == np.uint8 and data.shape == (COLS, ROWS, SLICES)  # ITK's grid of a DICOM series
    assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1
    assert np.allclose(image.header.get_zooms(), (COL_SPACING, ROW_SPACING, STEP))
    written = sorted(map(tuple, np.round(nib.affines.apply_affine(image.affine, np.argwhere(data == 1)), 4)))
    expected = sorted(tuple(np.round(_dicom_world(headers, s, r, c), 4)) for s, r, c in np.argwhere(mask))
    assert written == expected and len(written) == int(mask.sum())


def test_seg_frames_reference_the_right_source_images(series, tmp_path: Path) -> None:
    study, headers = series
    masks = _masks()
    path = save_dicom_seg(masks, study, tmp_path / "seg.dcm")
    seg = hd.seg.segread(str(path))
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == headers[0].SeriesInstanceUID
    assert seg.StudyInstanceUID == headers[0].StudyInstanceUID and seg.PatientID == "PHANTOM-1"
    assert seg.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
    assert seg.Manufacturer == "medsam3-agent"
    labels = [item.SegmentLabel for item in seg.SegmentSequence]
    assert labels == ["liver", "brain tumor", "nothing"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # SCT liver
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # neoplasm
    assert seg.SegmentSequence[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # tissue
    by_uid = {ds.SOPInstanceUID: index for index, ds in enumerate(headers)}
    frames = seg.pixel_array.reshape(-1, ROWS, COLS)
    names = list(masks)
    # empty frames are left out: one frame per (slice, segment) with a pixel
    assert len(frames) == sum(int(m[s].any()) for m in masks.values() for s in range(SLICES)) == 3
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        s = by_uid[source]
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, [float(v) for v in headers[s].ImagePositionPatient])
        assert np.array_equal(frame.astype(bool), masks[names[number - 1]][s])
    # and through highdicom's own source-indexed reader
    uids = [ds.SOPInstanceUID for ds in headers]
    back = seg.get_pixels_by_source_instance(uids, segment_numbers=[1, 2, 3])
    assert np.array_equal(back.astype(bool), np.stack(list(masks.values()), axis=-1))


def test_seg_of_nothing_found_is_a_valid_empty_seg(series, tmp_path: Path) -> None:
    study, _ = series
    path = save_dicom_seg({"liver": np.zeros(study.shape, dtype=bool)}, study, tmp_path / "empty.dcm")
    seg = hd.seg.segread(str(path))
    assert int(seg.NumberOfFrames) == SLICES and not seg.pixel_array.any()


def test_seg_refuses_studies_it_cannot_describe(series, tmp_path: Path) -> None:
    study, headers = series
    mask = {"liver": np.zeros(study.shape, dtype=bool)}
    no_headers = Study(slices=study.slices, geometry=study.geometry, kind="dicom")
    with pytest.raises(ExportError, match="no DICOM headers"):
        save_dicom_seg(mask, no_headers, tmp_path / "a.dcm")
    with pytest.raises(ExportError, match="is \\(5, 3, 3\\)"):
        save_dicom_seg({"liver": np.zeros((SLICES, 3, 3), dtype=bool)}, study, tmp_path / "b.dcm")
    shuffled = Study(slices=study.slices, geometry=study.geometry, kind="dicom", dicom_headers=headers[::-1])
    transposed_rows = study.geometry.model_copy(update={"affine": tuple(
        tuple(row) for row in study.geometry.affine_array() @ np.diag([1.0, -1.0, 1.0, 1.0]))})  # type: ignore[operator]
    flipped = Study(slices=study.slices, geometry=transposed_rows, kind="dicom", dicom_headers=headers)
    save_dicom_seg(mask, shuffled, tmp_path / "c.dcm")  # headers out of order are matched by position
    with pytest.raises(ExportError, match="not oriented as the source"):
        save_dicom_seg(mask, flipped, tmp_path / "d.dcm")
    with pytest.raises(ExportError, match="bool or integer"):
        save_dicom_seg({"liver": np.zeros(study.shape, dtype=np.float32)}, study, tmp_path / "e.dcm")
    assert not (tmp_path / "a.dcm").exists()


def test_seg_of_a_multiframe_source_references_its_frames(tmp_path: Path) -> None:
    """One enhanced CT file whose frames are stored top-down: each SEG frame names the source frame it lies on."""
    uids = generate_uid(), generate_uid(), generate_uid()
    slices = [_slice(index, AXIAL, *uids) for index in range(SLICES)]
    random.Random(3).shuffle(slices)
    multiframe = hd.legacy.LegacyConvertedEnhancedCTImage(
        slices, series_instance_uid=generate_uid(), series_number=4, sop_instance_uid=generate_uid(), instance_number=1)
    multiframe.save_as(tmp_path / "enhanced.dcm")
    source_z = [float(item.PlanePositionSequence[0].ImagePositionPatient[2])
                for item in multiframe.PerFrameFunctionalGroupsSequence]
    study = load_study(tmp_path / "enhanced.dcm")
    mask = np.zeros(study.shape, dtype=bool)
    mask[0, 1:3, 1:4] = True
    mask[3, 7, 2] = True
    seg = hd.seg.segread(str(save_dicom_seg({"liver": mask}, study, tmp_path / "seg.dcm")))
    study_z = (study.geometry.affine_array() @ np.array([[s, 0, 0, 1] for s in range(SLICES)]).T)[2]  # type: ignore
    frames = seg.pixel_array.reshape(-1, ROWS, COLS)
    assert len(frames) == 2
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        reference = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == multiframe.SOPInstanceUID
        z = source_z[int(reference.ReferencedFrameNumber) - 1]
        s = int(np.argmin(np.abs(study_z - z)))
        assert abs(study_z[s] - z) < 1e-6 and np.array_equal(frame.astype(bool), mask[s])


def test_real_ct_slice_exports(tmp_path: Path) -> None:
    """pydicom's CT_small.dcm: the SEG references it, the NIfTI voxel lies where the DICOM pixel lies."""
    path = get_testdata_file("CT_small.dcm")
    if not isinstance(path, str):
        pytest.skip("pydicom's CT_small.dcm is not installed")
    header = pydicom.dcmread(path, stop_before_pixels=True)
    study = load_study(path)
    mask = np.zeros(study.shape, dtype=bool)
    mask[0, 100, 20] = True
    seg = hd.seg.segread(str(save_dicom_seg({"lung": mask}, study, tmp_path / "seg.dcm")))
    reference = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert int(seg.NumberOfFrames) == 1 and reference.ReferencedSOPInstanceUID == header.SOPInstanceUID
    assert np.array_equal(seg.pixel_array.astype(bool), mask[0])
    image = _load(save_nifti(mask, study.geometry, tmp_path / "lung.nii.gz"))
    assert _world_set(image) == [tuple(np.round(_dicom_world([header], 0, 100, 20), 4))]


def test_seg_of_a_projection_xray_without_patient_position(tmp_path: Path) -> None:
    """A DX has no ImagePositionPatient: its one SEG frame is the image's, pixel for pixel."""
    path = get_testdata_file("CT_small.dcm")
    if not isinstance(path, str):
        pytest.skip("pydicom's CT_small.dcm is not installed")
    xray = pydicom.dcmread(path)
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "FrameOfReferenceUID", "SliceLocation"):
        delattr(xray, tag)
    xray.Modality, xray.SOPClassUID = "DX", "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    xray.file_meta.MediaStorageSOPClassUID = xray.SOPClassUID
    xray.save_as(tmp_path / "dx.dcm")
    study = load_study(tmp_path / "dx.dcm")
    mask = np.zeros(study.shape, dtype=bool)
    mask[0, 10:20, 90:100] = True
    hostile = "left lung\\x\x00" + "y" * 100  # a backslash would split the DICOM value, NUL is not text
    seg = hd.seg.segread(str(save_dicom_seg({hostile: mask}, study, tmp_path / "seg.dcm")))
    assert np.array_equal(seg.pixel_array.astype(bool).reshape(mask.shape), mask)
    assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == xray.SOPInstanceUID
    label = seg.SegmentSequence[0].SegmentLabel
    assert label.startswith("left lung x ") and len(label) == 64 and "\\" not in label


def _nifti_source(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A labelled NIfTI with an oblique, anisotropic affine (file axes i, j, k)."""
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-0.9, 1.1, 3.0])
    affine[:3, 3] = [40.0, -25.0, 12.0]
    labels = np.zeros((7, 6, 4), dtype=np.uint8)
    labels[1:3, 2:5, 1] = 1
    labels[6, 0, 3] = 1
    path = tmp_path / "source.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), str(path))
    return path, labels


def _study_of(labels: np.ndarray, affine: np.ndarray) -> tuple[Study, np.ndarray]:
    """The (slice, row, col) study a loader makes of a NIfTI: slice = k, rows = j flipped, cols = i (contract)."""
    values = np.transpose(labels, (2, 1, 0))[:, ::-1, :]
    new_to_old = np.array([[0, 0, 1, 0], [0, -1, 0, labels.shape[1] - 1], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    study_affine = affine @ new_to_old
    geometry = Geometry(affine=tuple(tuple(float(v) for v in row) for row in study_affine))
    grey = (values > 0).astype(np.uint8) * 255
    return Study(slices=np.repeat(grey[..., None], 3, axis=3), geometry=geometry, kind="nifti"), values > 0


def _world_set(image: nib.spatialimages.SpatialImage) -> list[tuple[float, ...]]:
    data = np.asarray(image.dataobj)
    return sorted(map(tuple, np.round(nib.affines.apply_affine(image.affine, np.argwhere(data > 0)), 4)))


def test_nifti_of_nifti_keeps_every_voxel_in_world_space(tmp_path: Path) -> None:
    path, labels = _nifti_source(tmp_path)
    source = _load(path)
    study, mask = _study_of(labels, source.affine)
    out = _load(save_nifti(mask, study.geometry, tmp_path / "mask.nii.gz"))
    assert _world_set(out) == _world_set(source)
    same_grid = _load(save_nifti(mask, study.geometry, tmp_path / "grid.nii.gz", like=path))
    assert np.array_equal(np.asarray(same_grid.dataobj), labels) and np.allclose(same_grid.affine, source.affine)
    with pytest.raises(ExportError, match="does not cover"):
        save_nifti(mask[:, :, :-1], study.geometry, tmp_path / "bad.nii.gz", like=path)


def test_nifti_without_affine_uses_the_spacing(tmp_path: Path) -> None:
    mask = np.zeros((1, 4, 6), dtype=bool)
    mask[0, 3, 5] = True
    image = _load(save_nifti(mask, Geometry(pixel_spacing=(0.5, 0.25)), tmp_path / "photo.nii.gz"))
    assert np.asarray(image.dataobj).shape == (6, 4, 1) and int(image.header["sform_code"]) == 2
    assert _world_set(image) == [(1.25, 1.5, 0.0)]  # col 5 * 0.25 mm, row 3 * 0.5 mm


def test_real_chaos_label_round_trips(tmp_path: Path) -> None:
    labels_dir = CHAOS / "labels" / "liver"
    if not labels_dir.is_dir():
        pytest.skip(f"shared data not found at {CHAOS}")
    path = sorted(labels_dir.glob("*.nii.gz"))[0]
    source = _load(path)
    labels = (np.asarray(source.dataobj) > 0).astype(np.uint8)
    study = load_study(path)  # the loader's own (slice, row, col) arrangement of the file
    assert study.values is not None
    mask = study.values > 0
    out = _load(save_nifti(mask, study.geometry, tmp_path / "liver.nii.gz"))
    assert _world_set(out) == _world_set(nib.Nifti1Image(labels, source.affine))
    same_grid = _load(save_nifti(mask, study.geometry, tmp_path / "grid.nii.gz", like=source))
    assert np.array_equal(np.asarray(same_grid.dataobj), labels)


# --- Agent.run on one DICOM or NIfTI slice: AgentResult.save writes the NIfTI (and SEG) as for a volume ---------


def _agent_on(tmp_path: Path, image: Path, mask: np.ndarray):
    """Agent.run "outline the lung" on ``image`` with a segmenter that answers ``mask`` there, then save."""
    from agent_helpers import OracleBackend

    from agent import Agent

    truth = tmp_path / "truth.png"
    Image.fromarray(mask.astype(np.uint8) * 255).save(truth)
    agent = Agent(planner="offline", segmenter=OracleBackend({str(image): {"lung": str(truth)}}))
    result = agent.run("outline the lung", image=image)
    assert result.found == bool(mask.any()), result.answer
    out = result.save(tmp_path / "out")
    return out, json.loads((out / "result.json").read_text(encoding="utf-8"))


def test_a_one_slice_dicom_through_the_agent_gets_a_nifti_and_a_seg_at_the_source_pixels(tmp_path: Path) -> None:
    path = get_testdata_file("CT_small.dcm")
    if not isinstance(path, str):
        pytest.skip("pydicom's CT_small.dcm is not installed")
    header = pydicom.dcmread(path, stop_before_pixels=True)
    mask = np.zeros((128, 128), dtype=bool)
    mask[30:40, 80:95] = True
    mask[40:46, 80:84] = True  # an L: a row/col swap or flip moves voxels
    out, saved = _agent_on(tmp_path, Path(path), mask)
    entry = saved["masks"][0]
    assert entry["nifti"] == "masks/lung_3d.nii.gz" and saved["seg"] == "segmentation.dcm"
    assert saved["nifti"] == [{"concept": "lung", "path": entry["nifti"]}]
    image = _load(out / entry["nifti"])
    assert np.asarray(image.dataobj).shape == (128, 128, 1) and int(image.header["sform_code"]) == 1
    expected = sorted(tuple(_dicom_world([header], 0, r, c)) for r, c in np.argwhere(mask))
    written = _world_set(image)  # the NIfTI stores its affine in float32: equal to ~1e-4 mm
    assert len(written) == len(expected) and np.allclose(written, expected, atol=1e-3)
    seg = hd.seg.segread(str(out / saved["seg"]))
    item = seg.PerFrameFunctionalGroupsSequence[0]
    assert item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
    assert np.allclose([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
                       [float(v) for v in header.ImagePositionPatient])
    assert seg.SegmentSequence[0].SegmentLabel == "lung" and np.array_equal(seg.pixel_array.astype(bool), mask)
    # the SEG carries the patient module by its standard; result.json never does
    text = (out / "result.json").read_text(encoding="utf-8")
    assert seg.PatientID == header.PatientID and str(header.PatientName) not in text and header.PatientID not in text


def test_nothing_found_on_a_dicom_slice_is_an_empty_nifti_and_seg(tmp_path: Path) -> None:
    path = get_testdata_file("CT_small.dcm")
    if not isinstance(path, str):
        pytest.skip("pydicom's CT_small.dcm is not installed")
    out, saved = _agent_on(tmp_path, Path(path), np.zeros((128, 128), dtype=bool))
    assert saved["masks"] == [] and saved["nifti"] == [{"concept": "lung", "path": "masks/lung_3d.nii.gz"}]
    assert not np.asarray(_load(out / "masks" / "lung_3d.nii.gz").dataobj).any()
    seg = hd.seg.segread(str(out / saved["seg"]))
    assert int(seg.NumberOfFrames) == 1 and not seg.pixel_array.any()


def test_a_dicom_slice_a_seg_cannot_reference_still_gets_its_nifti_and_says_why(tmp_path: Path) -> None:
    path = get_testdata_file("CT_small.dcm")
    if not isinstance(path, str):
        pytest.skip("pydicom's CT_small.dcm is not installed")
    ds = pydicom.dcmread(path)
    del ds.FrameOfReferenceUID  # a SEG of a slice with a patient position requires one
    ds.save_as(tmp_path / "no_frame.dcm")
    mask = np.zeros((128, 128), dtype=bool)
    mask[60:70, 10:30] = True
    out, saved = _agent_on(tmp_path, tmp_path / "no_frame.dcm", mask)
    assert saved["seg"] is None and "the source DICOM headers lack" in saved["seg_skipped"]
    assert not (out / "segmentation.dcm").exists() and saved["answer"]
    assert np.array_equal(np.asarray(_load(out / saved["masks"][0]["nifti"]).dataobj)[..., 0].T, mask)


def test_a_one_slice_nifti_through_the_agent_gets_a_nifti_on_the_source_voxels(tmp_path: Path) -> None:
    affine = np.array([[0.0, -0.8, 0.0, 30.0], [0.9, 0.0, 0.0, -12.0], [0.0, 0.0, 4.0, 7.0], [0, 0, 0, 1]])
    data = np.zeros((40, 30, 1), dtype=np.float32)
    data[5:15, 3:12, 0] = 100.0  # a block with a notch: its voxels are the truth
    data[5:8, 3:6, 0] = 0.0
    source = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(source))
    study = load_study(source)
    assert study.values is not None and study.shape[0] == 1
    out, saved = _agent_on(tmp_path, source, study.values[0] > 50)
    assert saved["seg"] is None and not (out / "segmentation.dcm").exists()
    assert [item["path"] for item in saved["nifti"]] == [saved["masks"][0]["nifti"]] == ["masks/lung_3d.nii.gz"]
    written = _load(out / saved["masks"][0]["nifti"])
    assert _world_set(written) == _world_set(nib.Nifti1Image((data > 50).astype(np.uint8), affine))


def test_a_png_through_the_agent_writes_pngs_only(tmp_path: Path) -> None:
    picture = np.zeros((64, 80, 3), dtype=np.uint8)
    picture[20:40, 30:60] = 180
    path = tmp_path / "photo.png"
    Image.fromarray(picture).save(path)
    out, saved = _agent_on(tmp_path, path, picture[..., 0] > 0)
    assert saved["masks"][0]["path"] == "masks/lung.png" and saved["masks"][0]["nifti"] is None
    assert saved["seg"] is None and saved["nifti"] == []
    assert not list(out.rglob("*.nii.gz")) and not list(out.rglob("*.dcm"))
