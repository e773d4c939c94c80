"""Volume cases in the eval runner: a NIfTI volume and NIfTI labels drawn here, scored per volume by the real
MedSAM3-Lite; volumetric metrics by hand; the shared brain_tumor_3d / chaos_mr_t2_3d volumes where present."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import DATA

from evals.cases import read_label_volume
from evals.config import EvalConfig
from evals.loaders import load_path
from evals.metrics import aggregate, score_case
from evals.modes import MeteredSegmenter
from evals.runner import run_eval
from evals.summary import FIELDS
from segmenter.study_io import load_study

AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])  # anisotropic voxels: 1.5 mm pixels, 3 mm slices


@pytest.fixture(scope="module")
def metered(segmenter):
    return MeteredSegmenter(segmenter.backend)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def write_nifti(root: Path, relative: str, data: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(root / relative))
    return relative


def test_volumetric_scores_by_hand():
    target = np.zeros((6, 10, 10), bool)
    target[1:4, 2:6, 2:6] = True  # 3 slices of 4x4
    pred = np.roll(target, 1, axis=0)  # one slice further: 2 of 3 slices overlap
    score = score_case(pred, target, spacing=(5.0, 1.0, 1.0))
    assert (score.intersection, score.union, score.target_area) == (32, 64, 48)
    assert score.dice == pytest.approx(2 * 32 / 96) and score.iou == pytest.approx(0.5)
    # every boundary voxel is at most one slice (5 mm) from the other surface; the pixel field stays empty
    assert score.hd95_mm == pytest.approx(5.0) and score.hd95 is None
    assert score_case(pred, target).hd95 == pytest.approx(1.0)  # without spacing: voxels
    agg = aggregate([score, score_case(target, target, spacing=(5.0, 1.0, 1.0))])
    assert agg["dice"] == pytest.approx((2 / 3 + 1) / 2) and agg["hd95_mm"] == pytest.approx(2.5)
    with pytest.raises(ValueError, match="spacing"):
        score_case(pred, target, spacing=(1.0, 1.0))


@pytest.fixture
def drawn_volume(tmp_path) -> Path:
    """A 4-slice volume (x, y, z) with a bright square in slices 1-2, and three labels: the square
    ("brain tumor"), a block in slice 0 only ("tumor core"), and one on another grid ("enhancing tumor")."""
    root = tmp_path / "data" / "vols"
    volume = np.full((48, 48, 4), 10.0, np.float32)
    volume[14:34, 16:36, 1:3] = 200.0
    square = np.zeros(volume.shape, np.uint8)
    square[14:34, 16:36, 1:3] = 1
    core = np.zeros(volume.shape, np.uint8)
    core[20:28, 20:28, 0] = 1
    row = {"id": "v1", "split": "val", "modality": "mri", "volume": write_nifti(root, "volumes/v1.nii.gz", volume),
           "masks": {"brain tumor": write_nifti(root, "labels/brain_tumor/v1.nii.gz", square),
                     "tumor core": write_nifti(root, "labels/tumor_core/v1.nii.gz", core),
                     "enhancing tumor": write_nifti(root, "labels/enhancing_tumor/v1.nii.gz",
                                                    np.zeros((48, 40, 4), np.uint8))}}
    (root / "manifest.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    return root


def test_a_drawn_volume_through_the_runner_is_scored_per_volume(drawn_volume, tmp_path, metered):
    cases = load_path(drawn_volume.parent, split="val")
    assert sorted((c.source, c.concept_label) for c in cases) == [
        ("volume", "brain tumor"), ("volume", "enhancing tumor"), ("volume", "tumor core")]
    out = tmp_path / "out"
    config = EvalConfig(data=[drawn_volume], modes=["direct", "box"], out=out, slices="1:3", save_masks=True)
    outcome = run_eval(config, segmenter=metered, progress=False, log=lambda _: None)
    records = {r["concept"]: r for r in lines(out / "results.jsonl")}
    assert set(records) == {"brain tumor", "tumor core", "enhancing tumor"}  # box mode takes no volume
    assert all(r["mode"] == "direct" and r["source"] == "volume" for r in records.values())
    assert outcome.errors == 1 and "label is (4, 40, 48) (slice, row, col), the volume is (4, 48, 48)" in records[
        "enhancing tumor"]["error"]

    study = load_study(drawn_volume / "volumes" / "v1.nii.gz")
    tumor = records["brain tumor"]
    assert tumor["error"] is None and tumor["slices"] == [1, 3] and tumor["n_slices"] == 2
    # the saved prediction lands on the volume's grid; Dice by hand from it and the label
    pred = read_label_volume(out / "masks" / "direct" / "volume_vols_v1_brain_tumor.nii.gz", study)
    label = read_label_volume(drawn_volume / "labels" / "brain_tumor" / "v1.nii.gz", study)
    assert label.sum() == 20 * 20 * 2 == tumor["target_area"] and pred.sum() == tumor["pred_area"]
    assert not pred[[0, 3]].any()  # slices outside --slices are never segmented
    hand = 2 * (pred & label).sum() / (pred.sum() + label.sum())
    assert tumor["dice"] == pytest.approx(hand)
    assert tumor["target_ml"] == pytest.approx(800 * 1.5 * 1.5 * 3.0 / 1000)
    # the core lies in slice 0 alone, which was not segmented: Dice 0 whatever the model saw elsewhere
    core = records["tumor core"]
    assert (core["dice"], core["intersection"], core["target_area"]) == (0.0, 0, 64)
    assert tumor["volume_seconds"] == core["volume_seconds"] > 0  # one pass for both concepts

    rows = {(r["dataset"], r["concept"]): r for r in outcome.summary}
    assert all(tuple(r) == FIELDS for r in outcome.summary)
    assert set(rows) == {("vols", "brain tumor"), ("vols", "tumor core"), ("vols", "enhancing tumor"), ("vols", "*")}
    whole = rows[("vols", "*")]
    assert whole["n"] == 3 and whole["errors"] == 1 and whole["hd95"] is None
    assert whole["dice"] == pytest.approx((hand + 0.0 + 0.0) / 3, abs=1e-4)  # the unreadable label is a miss
    assert whole["seconds_per_volume"] == pytest.approx(tumor["seconds"] + tumor["encode_seconds"]
                                                        + core["seconds"] + core["encode_seconds"], abs=1e-3)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Volumes" in report and "only slices `1:3` were segmented" in report


def test_target_slices_are_the_labels_span_and_bad_specs_are_refused(drawn_volume, tmp_path):
    from evals.volumes import chosen_slices

    study = load_study(drawn_volume / "volumes" / "v1.nii.gz")
    square = read_label_volume(drawn_volume / "labels" / "brain_tumor" / "v1.nii.gz", study)
    core = read_label_volume(drawn_volume / "labels" / "tumor_core" / "v1.nii.gz", study)
    assert chosen_slices("target", study, [square]) == range(1, 3)
    assert chosen_slices("target", study, [square, core]) == range(0, 3)
    assert chosen_slices(None, study, [square]) == range(4)
    moved = np.diag([1.5, 1.5, 3.0, 1.0])
    moved[0, 3] = 20.0
    write_nifti(tmp_path, "moved.nii.gz", np.ones((48, 48, 4), np.uint8), moved)
    with pytest.raises(ValueError, match="affine differs from the volume's"):
        read_label_volume(tmp_path / "moved.nii.gz", study)
    with pytest.raises(ValueError, match="--slices takes START:END"):
        EvalConfig(out=tmp_path, slices="1:3; rm -rf")


def _val_row(dataset: str) -> dict:
    manifest = DATA / dataset / "manifest.jsonl"
    if not manifest.is_file():
        pytest.skip(f"{manifest} not found")
    return next(json.loads(x) for x in manifest.read_text(encoding="utf-8").splitlines() if '"val"' in x)


def test_shared_brain_volume_labels_keep_every_voxel_and_one_slice_is_scored(tmp_path, metered):
    row = _val_row("brain_tumor_3d")
    root = DATA / "brain_tumor_3d"
    study = load_study(root / row["volume"])
    voxels = int(np.asarray(nib.load(str(root / row["masks"]["brain tumor"])).dataobj).astype(bool).sum())
    assert read_label_volume(root / row["masks"]["brain tumor"], study).sum() == voxels
    out = tmp_path / "out"
    config = EvalConfig(data=[DATA], datasets=["brain_tumor_3d"], concepts=["brain tumor"], modes=["direct"],
                        out=out, slices="100", hd95=False)
    run_eval(config, segmenter=metered, progress=False, log=lambda _: None)
    (record,) = lines(out / "results.jsonl")
    assert record["error"] is None and record["slices"] == [100, 101] and record["target_area"] == voxels
    assert record["target_ml"] == pytest.approx(voxels / 1000)  # 1 mm isotropic voxels
    assert 0.0 <= record["dice"] < 1.0  # one slice of many cannot cover the whole tumour


def test_shared_abdominal_volume_labels_load_on_the_volume_grid():
    row = _val_row("chaos_mr_t2_3d")
    root = DATA / "chaos_mr_t2_3d"
    study = load_study(root / row["volume"])
    masks = {c: read_label_volume(root / p, study) for c, p in row["masks"].items()}
    assert all(m.any() for m in masks.values())
    assert np.array_equal(masks["kidney"], masks["left kidney"] | masks["right kidney"])


def test_agent_mode_answers_a_volume_case_through_the_volume_path(drawn_volume, tmp_path, metered):
    out = tmp_path / "out"
    config = EvalConfig(data=[drawn_volume], concepts=["brain tumor"], modes=["agent"], planner="offline", out=out,
                        slices="1:3", hd95=False)
    run_eval(config, segmenter=metered, progress=False, log=lambda _: None)
    (record,) = lines(out / "results.jsonl")
    assert record["error"] is None, record["error"]
    assert record["question"] == "Segment the brain tumor in this volume." and record["planner"]
    assert record["slices"] == [1, 3] and record["target_area"] == 800 and record["volume_seconds"] > 0
    assert "brain tumor" in record["concepts_tried"] and record["answer"]
