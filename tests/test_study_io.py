"""load_study: real pydicom test files, series written here with pydicom, NIfTI made with nibabel and real
shared NIfTI volumes. Geometry is checked against ImagePositionPatient / the file's own affine, not re-derived."""

from __future__ import annotations

import gzip
import io
import json
import random
import warnings
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

from segmenter.image_io import ImageError, ImageTooLarge
from segmenter.study_io import load_image, load_study
from segmenter.windows import PRESETS, WindowError

CT_SMALL = get_testdata_file("CT_small.dcm")
MR_SMALL = get_testdata_file("MR_small.dcm")
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# an oblique orientation (rotated 30 degrees about z, then tilted), so axis mix-ups cannot cancel out
_c, _s = np.cos(np.pi / 6), np.sin(np.pi / 6)
OBLIQUE = (_c, _s, 0.0, -_s * 0.8, _c * 0.8, 0.6)


def _ras(lps) -> np.ndarray:
    return np.array([-lps[0], -lps[1], lps[2]], dtype=np.float64)


def _base(rows: int, cols: int, sop_class, series_uid: str, modality: str = "CT") -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = modality, series_uid, "1.2.3.4"
    ds.PatientName, ds.PatientID = "Test^Synthetic", "SYN-001"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def ct_slice(position, stored: np.ndarray, series_uid: str, orientation=AXIAL, spacing=(0.7, 0.9),
             slope: float = 1.0, intercept: float = -1024.0, photometric: str = "MONOCHROME2",
             modality: str = "CT", **extra) -> Dataset:
    ds = _base(stored.shape[0], stored.shape[1], CTImageStorage, series_uid, modality)
    ds.PhotometricInterpretation = photometric
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.SliceThickness = 2.5
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    return ds


def write_series(folder: Path, count: int = 6, step: float = 2.5, orientation=AXIAL, skip: int | None = None,
                 origin=(-100.0, -80.0, 30.0), series_uid: str | None = None, prefix: str = "") -> list[np.ndarray]:
    """Slice k holds stored value 1000 + 10k (+ a ramp); files are named in shuffled order. Returns positions."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = series_uid or generate_uid()
    normal = np.cross(orientation[:3], orientation[3:])
    ks = [k for k in range(count) if k != skip]
    names = list(range(len(ks)))
    random.Random(3).shuffle(names)
    positions = []
    for name, k in zip(names, ks, strict=True):
        position = np.asarray(origin) + k * step * normal
        positions.append(position)
        stored = 1000 + 10 * k + np.arange(20 * 16).reshape(20, 16) % 7
        ct_slice(position, stored, uid, orientation).save_as(folder / f"{prefix}{name:03d}.dcm",
                                                             enforce_file_format=True)
    return positions


def test_ct_small_becomes_hu_with_preset_dicom_and_override_windows():
    source = pydicom.dcmread(CT_SMALL)
    hu = source.pixel_array * float(source.RescaleSlope) + float(source.RescaleIntercept)
    study = load_study(CT_SMALL)
    assert study.kind == "dicom" and study.shape == (1, 128, 128) and study.geometry.modality == "CT"
    assert np.allclose(study.values[0], hu)
    assert study.geometry.pixel_spacing == pytest.approx((0.661468, 0.661468))
    assert study.window.name == "abdomen"  # CT_small has no window of its own; default preset
    assert "PixelData" not in study.dicom_headers[0] and study.dicom_headers[0].Modality == "CT"
    assert load_study(CT_SMALL, concept="left lung").window.name == "lung"
    assert load_study(CT_SMALL, concept="liver tumor").window.name == "liver"
    assert load_study(CT_SMALL, concept="brain tumor").window.name == "brain"
    assert load_study(CT_SMALL, concept="spleen").window.name == "abdomen"
    custom = load_study(CT_SMALL, window="40,400", concept="lung")  # the argument wins over the concept
    assert (custom.window.center, custom.window.width, custom.window.name) == (40, 400, "custom")
    bone = load_study(CT_SMALL, window="bone")
    assert (bone.window.center, bone.window.width) == PRESETS["bone"]
    # the display is exactly the window applied to HU
    lo = bone.window.center - bone.window.width / 2
    expected = np.clip((hu - lo) * 255 / bone.window.width, 0, 255).round()
    assert np.abs(bone.slices[0, ..., 0].astype(int) - expected).max() <= 1
    with pytest.raises(WindowError, match="unknown window preset"):
        load_study(CT_SMALL, window="sparkly")


def test_mr_gets_one_percentile_window_and_2d_entry_points_read_dicom():
    study = load_study(MR_SMALL)
    values = study.values
    assert study.geometry.modality == "MR" and study.window.name == "percentile"
    lo, hi = np.percentile(values, [0.5, 99.5])
    assert study.window.center - study.window.width / 2 == pytest.approx(lo)
    assert study.window.center + study.window.width / 2 == pytest.approx(hi)
    # load_image routes DICOM by content: a path without .dcm and bytes give the same display slice
    data = Path(CT_SMALL).read_bytes()
    ct = load_study(CT_SMALL).slices[0]
    assert (load_image(data) == ct).all()
    with pytest.raises(ImageTooLarge):
        load_image(data, max_pixels=100)


def test_series_sorted_by_position_not_name_and_affine_matches_positions(tmp_path):
    positions = write_series(tmp_path / "s", count=6, orientation=OBLIQUE)
    study = load_study(tmp_path / "s")
    assert study.shape == (6, 20, 16) and study.geometry.slice_spacing == pytest.approx(2.5)
    # slice k holds stored 1000 + 10k -> HU -24 + 10k: sorted along the normal, whatever the file names
    assert [int(v) for v in study.values[:, 0, 0]] == [-24 + 10 * k for k in range(6)]
    affine = study.geometry.affine_array()
    row_cos, col_cos = np.asarray(OBLIQUE[:3]), np.asarray(OBLIQUE[3:])
    ordered = sorted(positions, key=lambda p: float(np.dot(np.cross(row_cos, col_cos), p)))
    for k, i, j in [(0, 0, 0), (5, 19, 15), (3, 7, 11)]:
        lps = ordered[k] + j * 0.9 * row_cos + i * 0.7 * col_cos  # PixelSpacing (0.7 rows, 0.9 cols)
        assert affine @ np.array([k, i, j, 1.0]) == pytest.approx(np.append(_ras(lps), 1.0), abs=1e-4)
    assert len(study.dicom_headers) == 6 and all("PixelData" not in ds for ds in study.dicom_headers)


def test_one_file_alone_loads_and_a_volume_is_refused_by_load_image(tmp_path):
    write_series(tmp_path / "s", count=3)
    assert load_image(tmp_path / "s" / "001.dcm").shape == (20, 16, 3)
    mf = _multiframe([0.0, 2.0])
    with pytest.raises(ImageError, match="volume of 2 slices"):
        load_image(mf)


def test_missing_slice_two_series_and_stray_file_are_refused(tmp_path):
    write_series(tmp_path / "gap", count=8, skip=4)
    with pytest.raises(ImageError, match=r"missing slice: a gap of 5.00 mm after slice 4 of 7.*about 1 slice"):
        load_study(tmp_path / "gap")
    uid = generate_uid()
    (tmp_path / "dup").mkdir()
    for n, z in enumerate([0.0, 2.0, 2.0, 4.0]):  # two acquisitions at one position
        ct_slice((0, 0, z), np.zeros((4, 4)), uid).save_as(tmp_path / "dup" / f"{n}.dcm", enforce_file_format=True)
    with pytest.raises(ImageError, match="1 slice\\(s\\) repeat another slice's position"):
        load_study(tmp_path / "dup")
    write_series(tmp_path / "two", count=4, prefix="a")
    write_series(tmp_path / "two", count=3, prefix="b", origin=(0.0, 0.0, 200.0))
    with pytest.raises(ImageError, match="2 DICOM series"):
        load_study(tmp_path / "two")
    write_series(tmp_path / "stray", count=3)
    (tmp_path / "stray" / "notes.txt").write_text("not an image", encoding="utf-8")
    with pytest.raises(ImageError, match="notes.txt: not a DICOM file"):
        load_study(tmp_path / "stray")
    (tmp_path / "stray" / "notes.txt").unlink()
    (tmp_path / "stray" / ".DS_Store").write_bytes(b"\0" * 64)  # hidden files beside a series are ignored
    assert load_study(tmp_path / "stray").shape[0] == 3
    (tmp_path / "stray" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 10)
    with pytest.raises(ImageError, match="broken.dcm"):
        load_study(tmp_path / "stray")


def test_uneven_spacing_orientation_and_size_are_refused(tmp_path):
    uid = generate_uid()
    folder = tmp_path / "uneven"
    folder.mkdir()
    for n, z in enumerate([0.0, 2.0, 4.0, 6.6, 8.6]):
        ct_slice((0, 0, z), np.zeros((4, 4)), uid).save_as(folder / f"{n}.dcm", enforce_file_format=True)
    with pytest.raises(ImageError, match="inconsistent slice spacing"):
        load_study(folder)
    ct_slice((0, 0, 10.6), np.zeros((4, 4)), uid, orientation=(0, 1, 0, 0, 0, -1)).save_as(
        folder / "x.dcm", enforce_file_format=True)
    with pytest.raises(ImageError, match="inconsistent orientation"):
        load_study(folder)
    ct_slice((0, 0, 10.6), np.zeros((5, 4)), uid).save_as(folder / "x.dcm", enforce_file_format=True)
    with pytest.raises(ImageError, match="inconsistent image size"):
        load_study(folder)


def test_rescale_own_window_monochrome1_and_budget(tmp_path):
    ramp = np.arange(64, dtype=np.uint16).reshape(8, 8) * 20
    ds = ct_slice((0, 0, 0), ramp, generate_uid(), slope=2.0, intercept=-1000.0,
                  WindowCenter=[40, 50], WindowWidth=[400, 500])
    path = tmp_path / "w.dcm"
    ds.save_as(path, enforce_file_format=True)
    study = load_study(path, concept="lung")
    assert np.allclose(study.values[0], ramp * 2.0 - 1000.0)
    assert (study.window.center, study.window.width, study.window.name) == (40, 400, "dicom")  # first values
    assert load_study(path, window="lung").window.name == "lung"
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm", enforce_file_format=True)
    inverted = load_study(tmp_path / "m1.dcm")
    assert (inverted.slices == 255 - study.slices).all() and np.allclose(inverted.values, study.values)
    with pytest.raises(ImageTooLarge, match="above the limit of 10"):
        load_study(path, max_pixels=10)


def _multiframe(z_values: list[float]) -> bytes:
    """An Enhanced CT multi-frame with per-frame positions (given out of order) and shared geometry."""
    ds = _base(6, 5, EnhancedCTImageStorage, generate_uid())
    ds.NumberOfFrames = len(z_values)
    shared = Dataset()
    orient, measures, rescale = Dataset(), Dataset(), Dataset()
    orient.ImageOrientationPatient = list(AXIAL)
    measures.PixelSpacing, measures.SliceThickness = [0.5, 0.6], 2.0
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 1, -1024, "HU"
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [orient], [measures]
    shared.PixelValueTransformationSequence = [rescale]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for z in z_values:
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [10.0, 20.0, z]
        item.PlanePositionSequence = [plane]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    frames = np.stack([np.full((6, 5), 1024 + int(z), np.uint16) for z in z_values])
    ds.PixelData = frames.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_multiframe_frames_sorted_by_position(tmp_path):
    path = tmp_path / "enhanced"  # no extension: found by the DICM preamble
    path.write_bytes(_multiframe([6.0, 0.0, 4.0, 2.0]))
    study = load_study(path)
    assert study.shape == (4, 6, 5)
    assert list(study.values[:, 0, 0]) == [0.0, 2.0, 4.0, 6.0]  # HU = z here
    assert study.geometry.pixel_spacing == (0.5, 0.6) and study.geometry.slice_spacing == pytest.approx(2.0)
    affine = study.geometry.affine_array()
    assert affine @ np.array([3, 5, 4, 1.0]) == pytest.approx([-(10 + 4 * 0.6), -(20 + 5 * 0.5), 6.0, 1.0])


def test_zip_of_a_series_read_in_memory(tmp_path):
    write_series(tmp_path / "s", count=5)
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((tmp_path / "s").iterdir()):
            zf.write(path, f"export/series/{path.name}")
        zf.writestr("__MACOSX/._000.dcm", b"resource fork")
    from_zip = load_study(archive)
    from_folder = load_study(tmp_path / "s")
    assert from_zip.shape == (5, 20, 16) and (from_zip.values == from_folder.values).all()
    assert from_zip.geometry == from_folder.geometry
    assert (load_study(archive.read_bytes()).values == from_folder.values).all()


def test_nifti_nan_becomes_background_with_a_warning(tmp_path):
    data = np.linspace(0, 100, 4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    data[1, 2, 0], data[3, 4, 2], data[0, 1, 1] = np.nan, np.inf, -np.inf
    path = tmp_path / "map.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 3.0, 4.0, 1.0])), path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study = load_study(path)
    assert any("3 NaN or infinite voxel(s)" in str(w.message) for w in caught)
    assert study.kind == "nifti" and study.shape == (3, 5, 4) and np.isfinite(study.values).all()
    assert study.values.min() == pytest.approx(data[np.isfinite(data)].min())
    assert study.geometry.pixel_spacing == (3.0, 2.0) and study.geometry.slice_spacing == 4.0


def _check_voxels_keep_world_positions(study, image, samples: int = 50) -> None:
    """Each (slice, row, col) voxel holds the file voxel that sits at the same world position."""
    file_data = np.asarray(image.dataobj, dtype=np.float32)
    to_file = np.linalg.inv(image.affine) @ study.geometry.affine_array()
    rng = np.random.default_rng(0)
    for _ in range(samples):
        index = [int(rng.integers(n)) for n in study.shape]
        file_index = to_file @ np.array([*index, 1.0])
        assert np.allclose(file_index, np.round(file_index), atol=1e-4)
        i, j, k = (int(round(v)) for v in file_index[:3])
        assert study.values[tuple(index)] == pytest.approx(file_data[i, j, k])


@pytest.mark.parametrize("dataset", ["chaos_mr_t2_3d", "brain_tumor_3d"])
def test_real_nifti_geometry_matches_manifest_and_file_affine(data_root, dataset):
    folder = data_root / dataset
    if not (folder / "manifest.jsonl").exists():
        pytest.skip(f"{dataset} not in the shared data")
    row = json.loads((folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines()[0])
    path = folder / row["volume"]
    study = load_study(path)
    image = nib.load(path)
    sx, sy, sz = row["spacing"]
    assert study.shape == (row["shape"][2], row["shape"][1], row["shape"][0])
    assert study.geometry.pixel_spacing == pytest.approx((sy, sx)) and study.geometry.slice_spacing == pytest.approx(sz)
    _check_voxels_keep_world_positions(study, image)
    # radiological display: columns run toward the patient's left, rows toward posterior (RAS -x, -y)
    affine = study.geometry.affine_array()
    assert affine[0, 2] < 0 and affine[1, 1] < 0
    sagittal = load_study(path, slice_axis=0)
    assert sagittal.shape[0] == row["shape"][0]
    _check_voxels_keep_world_positions(sagittal, image, samples=20)


def test_nifti_display_matches_the_shared_2d_slices(data_root):
    lines = (data_root / "chaos_mr_t2" / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    row = next((json.loads(line) for line in lines
                if json.loads(line)["id"] == "chaos_mr13_z010"), None)
    volume = data_root / "chaos_mr_t2_3d" / "volumes" / "chaos_mr13.nii.gz"
    if row is None or not volume.exists():
        pytest.skip("chaos_mr13 not in the shared data")
    png = np.asarray(Image.open(data_root / "chaos_mr_t2" / row["image"]).convert("L"), dtype=np.float64)
    shown = load_study(volume).slices[row["slice_index"], ..., 0].astype(np.float64)
    assert np.corrcoef(shown.ravel(), png.ravel())[0, 1] > 0.98  # same orientation as the 2D training slices


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_study(tmp_path / "absent.dcm")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageError, match="no DICOM file"):
        load_study(empty)
    path = tmp_path / "t.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.float32), np.eye(4)), path)
    with pytest.raises(ImageError, match="4D NIfTI"):
        load_study(path)
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(ImageError, match="not a readable zip"):
        load_study(tmp_path / "bad.zip")
    assert load_study(np.zeros((4, 5), np.uint8)).kind == "image"  # arrays stay 2D images


def test_one_frame_enhanced_file_keeps_its_per_frame_position(tmp_path):
    study = load_study(_multiframe([3.0]))
    assert study.shape == (1, 6, 5) and study.geometry.slice_spacing is None
    assert study.geometry.affine_array()[:3, 3] == pytest.approx([-10.0, -20.0, 3.0])


def test_archives_are_bounded_by_the_voxel_budget_before_unpacking(tmp_path):
    """A small zip or gzip that unpacks far past the caller's budget is refused, not read into memory."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("series/big.dcm", bytes(80 << 20))  # 80 MiB of zeros, ~80 kB compressed
    with pytest.raises(ImageTooLarge, match="zip unpacks to"):
        load_study(archive.getvalue(), max_pixels=1000)
    # a NIfTI whose header claims 2x2x2 voxels but whose gzip stream goes on for 80 MiB
    raw = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)).to_bytes() + bytes(80 << 20)
    with pytest.raises(ImageTooLarge, match="gzip unpacks to more than"):
        load_study(gzip.compress(raw, compresslevel=1), max_pixels=1000)


def test_colour_dicom_is_shown_as_stored_and_a_ct_nifti_gets_ct_windows(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    ds = _base(6, 7, CTImageStorage, generate_uid(), modality="US")
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = rgb.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    study = load_study(buffer.getvalue())
    assert (study.slices[0] == rgb).all() and study.values is None and study.window is None
    assert (load_image(buffer.getvalue()) == rgb).all()
    path = tmp_path / "ct.nii"
    nib.save(nib.Nifti1Image(np.full((4, 4, 2), -500, np.int16), np.eye(4)), path)
    assert load_study(path).window.name == "percentile"  # units unknown
    ct = load_study(path, modality="CT", concept="lung nodule")
    assert ct.window.name == "lung" and ct.geometry.modality == "CT" and ct.values.min() == -500
    # without a stated modality, a NIfTI whose values reach air's Hounsfield units is read as CT; given wins
    air = np.full((4, 4, 2), 40, np.int16)
    air[0] = -1024
    nib.save(nib.Nifti1Image(air, np.eye(4)), path)
    assert load_study(path).geometry.modality == "CT" and load_study(path).window.name == "abdomen"
    assert load_study(path, modality="mr").geometry.modality == "MR"
