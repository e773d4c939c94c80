"""Volumes (issue 10 item 2): concepts segmented slice by slice, cleaned up in 3D, answered in mL, written as
NIfTI (and DICOM SEG for DICOM input) at the source geometry.

The lite encoder costs seconds per slice on a CPU, so the volumes here are a few slices: a real chest
X-ray (the repo's CC BY example) stacked with blank slices, so the presence gate must say "absent" on
the blank ones; and a real brain MR val volume restricted to six slices around its tumour.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from agent_helpers import FakeOpenAI, error_reply, openai_agent, text_reply
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from agent import Agent
from agent.cli import main as cli_main
from agent.errors import AgentError
from agent.volume_mllm import TILE
from segmenter.study import Geometry, Study
from segmenter.study_io import load_study
from segmenter.volume import VolumeError, clean_3d, island_threshold, parse_slices, segment_volume

ROOT = Path(__file__).resolve().parents[1]
XRAY_NAME = "chest_xray_pa_radiopaedia_9171.jpg"
SIZE = 192  # small slices keep each encode short
QUESTION = "outline the lungs and give their volume"


def _xray() -> np.ndarray:
    for folder in (ROOT / "examples", ROOT.parent / "shared" / "examples"):
        if (folder / XRAY_NAME).exists():
            return np.asarray(Image.open(folder / XRAY_NAME).convert("L").resize((SIZE, SIZE)))
    pytest.skip(f"{XRAY_NAME} not found in examples/")


def _nifti(path: Path) -> nib.Nifti1Image:
    image = nib.load(str(path))
    assert isinstance(image, nib.Nifti1Image)
    return image


def _stack() -> np.ndarray:
    """(4, H, W) uint8: blank, the X-ray, the X-ray shifted 4 px, blank (3 distinct slices to encode)."""
    xray = _xray()
    blank = np.zeros_like(xray)
    return np.stack([blank, xray, np.roll(xray, 4, axis=1), blank])


def test_slice_ranges_and_3d_clean_up() -> None:
    assert parse_slices("40:80", 100) == range(40, 80)
    assert parse_slices(":3", 10) == range(0, 3) and parse_slices("7", 10) == range(7, 8)
    assert parse_slices(None, 5) == range(5) and parse_slices(range(2, 4), 5) == range(2, 4)
    for bad in ("80:40", "0:200", "a:b", "1:2:3", "", "-3:"):
        with pytest.raises(VolumeError):
            parse_slices(bad, 100)
    mask = np.zeros((5, 20, 20), bool)
    mask[1:4, 2:8, 2:8] = True  # 108 voxels over three slices
    mask[2, 12, 12] = mask[3, 13, 13] = True  # two voxels touching diagonally across slices: one island
    mask[0, 15:18, 15:18] = True  # 9 voxels
    labels, components, dropped = clean_3d(mask, min_voxels=5, presence=[0.1, 0.9, 0.8, 0.7, None])
    assert [c.voxels for c in components] == [108, 9] and dropped == 1
    assert components[0].bbox == (1, 2, 2, 4, 8, 8) and components[0].score == pytest.approx(0.9)
    assert labels[2, 12, 12] == 0 and labels[0, 16, 16] == 2
    # an organ the body has one of (catalog max_parts_3d: liver 1): only the largest part stays
    labels, components, dropped = clean_3d(mask, min_voxels=5, max_parts=1)
    assert [c.voxels for c in components] == [108] and dropped == 2 and labels[0, 16, 16] == 0
    # the island threshold follows the voxel size: 0.02 mL of 1 x 1 x 2 mm voxels is 10 voxels
    assert island_threshold(Geometry(pixel_spacing=(1.0, 1.0), slice_spacing=2.0)) == 10
    assert island_threshold(Geometry()) == 20


def test_volume_found_on_its_slices_and_nifti_at_the_source_affine(tmp_path: Path, segmenter) -> None:
    stack = _stack()
    affine = np.array([[-0.8, 0, 0, 90.0], [0, -0.8, 0, 70.0], [0, 0, 2.5, -20.0], [0, 0, 0, 1]])
    source = tmp_path / "chest.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(stack.transpose(2, 1, 0)), affine), str(source))  # (x, y, z)
    study = load_study(source)
    assert study.shape == (4, SIZE, SIZE)
    encodes = segmenter.backend.encode_count
    seen: list[tuple[int, int]] = []
    result = segment_volume(segmenter, study, ["lung", "left lung"],
                            progress=lambda done, total: seen.append((done, total)))
    assert segmenter.backend.encode_count - encodes <= 3  # each distinct slice encoded once, for both concepts
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    lung = result.concepts["lung"]
    per_slice = lung.mask.sum(axis=(1, 2))
    assert per_slice[0] == 0 and per_slice[3] == 0 and per_slice[1] > 0.1 * SIZE * SIZE and per_slice[2] > 0
    absent, present = lung.presence[0], lung.presence[1]
    assert absent is not None and present is not None and absent < 0.5 < present  # the gate, per slice
    assert 1 <= len(lung.components) <= 2  # the two lungs, each one 3D component across slices 1-2
    # "left" by the study's affine: x falls as the column grows, so the patient's left is at high columns
    left = result.concepts["left lung"].mask
    # the lung's pixels on that side, plus the 'left lung' entry's own mask there: never across the midline
    assert left.any() and np.nonzero(left)[2].mean() > SIZE / 2 and not left[..., : SIZE // 3].any()
    assert (left & lung.mask).sum() > 0.5 * left.sum()

    agent = Agent(planner="offline", segmenter=segmenter)
    answer = agent.run(QUESTION, image=source)  # the same slices again: embeddings come from the cache
    assert answer.volume is not None and "mL" in answer.answer, answer.answer
    expected_ml = lung.mask.sum() * 0.8 * 0.8 * 2.5 / 1000
    assert any(m.kind == "volume" and m.value == pytest.approx(expected_ml, rel=0.05) for m in answer.measurements)
    out = answer.save(tmp_path / "out")
    written = _nifti(out / "masks" / "lung_3d.nii.gz")
    assert np.allclose(written.affine, affine) and written.shape == (SIZE, SIZE, 4)
    data = np.asarray(written.dataobj).transpose(2, 1, 0) > 0
    assert np.array_equal(data, answer.volume.concepts["lung"].mask)
    assert (out / "overlay.png").exists() and not (out / "segmentation.dcm").exists()  # SEG only for DICOM

    # a one-slice NIfTI goes the 2D way, its pixel spacing kept: sizes in mm², not pixels
    one = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(stack[1:2].transpose(2, 1, 0)), affine), str(one))
    flat = agent.run("how big are the lungs?", image=one)
    assert flat.volume is None and any(m.unit == "mm²" for m in flat.measurements), flat.answer


def test_an_mllm_planner_names_the_concepts_from_three_labelled_slices(tmp_path: Path, segmenter) -> None:
    source = tmp_path / "chest.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(_stack().transpose(2, 1, 0)), np.diag([0.8, 0.8, 2.5, 1])),
             str(source))
    script = [text_reply('{"concepts": ["lung"]}'), text_reply("I cannot tell from these images."),
              error_reply(500)]
    with FakeOpenAI(script) as server:
        agent = openai_agent(server, segmenter)
        named = agent.run(QUESTION, image=source)
        fallback = agent.run(QUESTION, image=source)
        with pytest.raises(AgentError) as failed:  # the endpoint down fails the run, as in 2D: no fallback
            agent.run(QUESTION, image=source)
    partial = failed.value.partial
    assert partial is not None and partial.status == "error" and partial.trace[-1].kind == "error"
    shown = server.images(0)
    assert len(server.requests) == 3 and len(shown) == 1  # one montage per run, not the volume
    assert shown[0].shape == (TILE, 3 * TILE, 3)  # slices 0, 2 and 3, each scaled to the tile
    plan = named.trace[0]
    assert plan.kind == "plan" and "named by fake-vlm" in plan.text and plan.image is not None
    assert named.concepts_tried == ["lung"] and "mL" in named.answer
    # an unusable reply: the concept picker reads the question instead, and the plan says so
    assert fallback.concepts_tried == ["lung"] and "named no concept" in fallback.trace[0].text


def _series(folder: Path, stack: np.ndarray, spacing: tuple[float, float] = (0.8, 0.8), step: float = 2.5
            ) -> list[Dataset]:
    """A synthetic MR series of ``stack``'s slices, files named against their order."""
    folder.mkdir(parents=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    written = []
    for k, pixels in enumerate(stack):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        fields = {
            "SOPClassUID": MRImageStorage, "SOPInstanceUID": meta.MediaStorageSOPInstanceUID, "Modality": "MR",
            "PatientName": "Volume^Test", "PatientID": "VOL-1", "PatientBirthDate": "19800101", "PatientSex": "O",
            "StudyInstanceUID": study_uid, "StudyDate": "20260101", "StudyTime": "090000", "StudyID": "7",
            "AccessionNumber": "A7", "ReferringPhysicianName": "", "SeriesInstanceUID": series_uid,
            "SeriesNumber": 5, "InstanceNumber": k + 1, "FrameOfReferenceUID": frame_uid,
            "PositionReferenceIndicator": "", "Manufacturer": "pytest", "ImageType": ["ORIGINAL", "PRIMARY"],
            "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            "ImagePositionPatient": [-70.0, -60.0, 10.0 + k * step], "PixelSpacing": list(spacing),
            "SliceThickness": step, "Rows": pixels.shape[0], "Columns": pixels.shape[1], "SamplesPerPixel": 1,
            "PhotometricInterpretation": "MONOCHROME2", "BitsAllocated": 16, "BitsStored": 16, "HighBit": 15,
            "PixelRepresentation": 0, "PixelData": pixels.astype(np.uint16).tobytes(),
        }
        for key, value in fields.items():
            setattr(ds, key, value)
        ds.save_as(folder / f"im{len(stack) - k:02d}.dcm", enforce_file_format=True)
        written.append(ds)
    return written


def test_cli_on_a_dicom_series_writes_nifti_and_seg_and_states_ml(tmp_path: Path, capsys) -> None:
    headers = _series(tmp_path / "series", _stack())
    out = tmp_path / "out"
    code = cli_main(["run", str(tmp_path / "series"), QUESTION, "--out", str(out), "--planner", "offline",
                     "--slices", "1:3"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "mL" in printed and "slices 2/2" in printed, printed
    written = _nifti(out / "masks" / "lung_3d.nii.gz")
    assert written.shape == (SIZE, SIZE, 4) and np.asarray(written.dataobj)[..., 0].sum() == 0  # outside --slices
    seg = pydicom.dcmread(out / "segmentation.dcm")
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "lung"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == headers[0].SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for frame in seg.PerFrameFunctionalGroupsSequence
                  for item in frame.DerivationImageSequence[0].SourceImageSequence}
    assert referenced <= {ds.SOPInstanceUID for ds in headers[1:3]}  # frames only where the lungs are

    # 'segment' takes the same inputs and options: one concept over the chosen slices, no planner
    seg_args = ["segment", str(tmp_path / "series"), "lung", "--out", str(tmp_path / "seg"), "--slices", "1:2"]
    assert cli_main(seg_args) == 0
    summary = json.loads((tmp_path / "seg" / "result.json").read_text(encoding="utf-8"))
    assert summary["slices"] == [1, 2] and summary["volume_ml"] > 0 and len(summary["presence"]) == 1
    assert (tmp_path / "seg" / "mask.nii.gz").exists() and (tmp_path / "seg" / "segmentation.dcm").exists()


def _brats_val(data_root: Path) -> tuple[Path, Path]:
    folder, name = data_root / "brain_tumor_3d", "brats2013_pat0006.nii.gz"  # the val volume
    if not (folder / "volumes" / name).exists():
        pytest.skip("brain_tumor_3d val volume not found")
    return folder / "volumes" / name, folder / "labels" / "brain_tumor" / name


def _label_on_study_grid(label_path: Path, study_affine: np.ndarray) -> np.ndarray:
    """The label volume indexed (slice, row, col) like the study, found from the two affines (axes swapped only)."""
    image = _nifti(label_path)
    to_label = np.linalg.inv(image.affine) @ study_affine  # study index -> label voxel index
    order = [int(np.argmax(np.abs(to_label[:3, k]))) for k in range(3)]  # label axis of slice, row, col
    data = np.asarray(image.dataobj) > 0
    data = np.transpose(data, order)
    for k in range(3):
        if to_label[order[k], k] < 0:
            data = np.flip(data, axis=k)
    return data


def test_real_brain_tumor_volume_dice_on_six_slices(data_root: Path, segmenter) -> None:
    volume_path, label_path = _brats_val(data_root)
    study = load_study(volume_path)
    affine = study.geometry.affine_array()
    assert affine is not None
    truth = _label_on_study_grid(label_path, affine)
    assert truth.shape == study.shape
    key = int(truth.sum(axis=(1, 2)).argmax())
    chosen = range(key - 3, key + 3)
    result = segment_volume(segmenter, study, "brain tumor", slices=f"{chosen.start}:{chosen.stop}")
    found = result.concepts["brain tumor"].mask[chosen.start:chosen.stop]
    expected = truth[chosen.start:chosen.stop]
    overlap = (found & expected).sum()
    dice, precision = 2 * overlap / (found.sum() + expected.sum()), overlap / max(1, found.sum())
    print(f"brats2013_pat0006 slices {chosen.start}-{chosen.stop - 1}: Dice {dice:.3f}, precision {precision:.3f}")
    # measured with the shipped lite weights: Dice 0.066, precision 1.00. The model outlines only the brightest
    # part of this large tumour (on the shared 2D slices of this patient it scores 0.12-0.22), so the floors
    # check that the volume path puts the mask on the tumour (a flipped or shifted slice order scores ~0)
    assert dice > 0.03 and precision > 0.8


def test_an_organ_trained_on_mr_asked_of_a_ct_volume_comes_with_a_caution() -> None:
    from agent.volume import answer_text, unvalidated
    from segmenter.volume import VolumeResult

    slices = np.zeros((3, 8, 8, 3), np.uint8)
    ct, mr, unknown = (Study(slices=slices, geometry=Geometry(modality=m)) for m in ("CT", "MR", None))
    # liver and the kidneys were trained and validated on MR (concepts.json: modality "mri"); polyp on endoscopy
    assert unvalidated(["liver", "left kidney", "not a concept"], ct) == ["liver", "left kidney"]
    assert unvalidated(["liver", "kidney"], mr) == [] and unvalidated(["liver"], unknown) == []
    assert unvalidated(["polyp"], mr) == ["polyp"]
    empty = VolumeResult(shape=(3, 8, 8), slices=range(3), concepts={})
    assert "Caution" not in answer_text(empty, [])
    caution = answer_text(empty, [], ["liver"], "CT")
    assert "not trained and validated for liver on CT" in caution and "no evidence of absence" in caution
