"""The eval runner end to end with the real MedSAM3-Lite: shared data (skipped where absent), and
synthetic ReasonSeg / COCO / broken-image sets written to tmp."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA
from PIL import Image
from test_evals_loaders import write_coco, write_reasonseg

from agent.cli import main as cli_main
from evals.modes import MeteredSegmenter, target_boxes
from evals.runner import EvalConfig, run_eval
from evals.summary import FIELDS
from segmenter.lite.backend import default_weights_path, expert_weights_path
from segmenter.lite.runtime import file_sha256


@pytest.fixture(scope="module")
def metered(segmenter):
    """The session's loaded model behind the runner's metering facade (no second model load)."""
    return MeteredSegmenter(segmenter.backend)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_eval_cli_on_shared_data_writes_outputs_and_resumes(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["eval", "--data", str(data_root), "--split", "val", "--mode", "direct,box", "--limit", "2",
            "--datasets", "kvasir_seg", "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 0
    records = lines(out / "results.jsonl")
    assert sorted((r["mode"], r["dataset"]) for r in records) == [("box", "kvasir_seg")] * 2 + [
        ("direct", "kvasir_seg")] * 2
    assert all(r["error"] is None and r["concept"] == "polyp" for r in records)
    for r in records:
        assert 0.0 <= r["dice"] <= 1.0 and r["target_area"] > 0 and r["seconds"] >= 0
    assert {r["n_boxes"] for r in records if r["mode"] == "box"} >= {1}
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    rows = summary["rows"]
    assert summary["identity"]["backend"] == "lite" and len(summary["identity"]["weights_sha256"]) == 64
    # the shipped experts are part of the run's identity
    assert summary["identity"]["experts"] == {
        name: file_sha256(expert_weights_path(default_weights_path(), name))
        for name in ("abdomen", "abdomen_ct", "chest", "liver")}
    assert all(r["identity"] == {k: summary["identity"][k] for k in r["identity"]} for r in records)
    assert all(tuple(r) == FIELDS for r in rows)
    star = {(r["mode"], r["dataset"], r["concept"]): r for r in rows}
    assert star[("direct", "kvasir_seg", "*")]["n"] == 2 and star[("box", "*", "*")]["n"] == 2
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| kvasir_seg (Kvasir-SEG) | 0.8244 | 0.7657 | 0.7671 | 0.8831 |" in report
    assert "--limit 2 --datasets kvasir_seg" in report
    assert (out / "dice_kvasir_seg.png").stat().st_size > 0
    first = capsys.readouterr()
    assert "4 (mode, case) pairs run, 0 resumed, 0 errors" in first.out

    # the second run finds every pair done: nothing is appended, the summary is rebuilt the same
    assert cli_main(argv) == 0
    second = capsys.readouterr()
    assert "0 (mode, case) pairs run, 4 resumed" in second.out
    assert "resuming: 4 of 4" in second.err
    assert len(lines(out / "results.jsonl")) == 4
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["rows"] == rows

    # other settings into the same folder are refused rather than mixed
    assert cli_main([*argv, "--presence-threshold", "0.7"]) == 2
    err = capsys.readouterr().err  # the run above gated each concept at its calibrated threshold
    assert "holds results made with other settings (presence_threshold: 'calibrated" in err and "-> 0.7)" in err


def test_errors_are_recorded_per_case_and_retried_on_rerun(tmp_path, metered):
    root = tmp_path / "data" / "mixed"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    image = np.full((64, 64, 3), 40, np.uint8)
    image[20:44, 16:48] = 220
    Image.fromarray(image).save(root / "images" / "good.png")
    Image.fromarray((np.pad(np.ones((24, 32)), ((20, 20), (16, 16))) * 255).astype(np.uint8)).save(
        root / "masks" / "good.png")
    (root / "images" / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "small.png")  # wrong size
    rows = [
        {"id": "good", "image": "images/good.png", "split": "val", "masks": {"polyp": "masks/good.png"}},
        {"id": "broken", "image": "images/broken.png", "split": "val", "masks": {"polyp": "masks/good.png"}},
        {"id": "badmask", "image": "images/good.png", "split": "val", "masks": {"skin lesion": "masks/small.png"}},
    ]
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    config = EvalConfig(data=[root], modes=["direct", "box"], out=tmp_path / "out")
    outcome = run_eval(config, segmenter=metered, progress=False, log=lambda _: None)
    records = {(r["mode"], r["id"]): r for r in lines(tmp_path / "out" / "results.jsonl")}
    assert len(records) == 6 and outcome.errors == 4
    assert "ImageError" in records[("direct", "broken")]["error"] and "not a readable image" in records[
        ("direct", "broken")]["error"]
    assert "mask is 10x10, image is 64x64" in records[("box", "badmask")]["error"]
    assert records[("direct", "good")]["error"] is None and records[("box", "good")]["n_boxes"] == 1
    report = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "## Errors (4)" in report
    # rerun: the 2 good pairs are kept, the 4 failures are tried again (and fail again)
    again = run_eval(config, segmenter=metered, progress=False, log=lambda _: None)
    assert (again.ran, again.skipped, again.errors) == (4, 2, 4)
    assert len(lines(tmp_path / "out" / "results.jsonl")) == 10


def test_reasonseg_and_coco_sets_run_through_the_real_segmenter(tmp_path, metered):
    write_reasonseg(tmp_path / "rs")
    coco = write_coco(tmp_path / "coco")
    out = tmp_path / "out"
    config = EvalConfig(data=[tmp_path / "rs", coco], split=None, modes=["direct", "box"], out=out, save_masks=True)
    run_eval(config, segmenter=metered, progress=False, log=lambda _: None)
    records = lines(out / "results.jsonl")
    assert all(r["error"] is None for r in records), [r["error"] for r in records]
    # direct/box take the COCO concept cases (the run has some); ReasonSeg questions wait for the agent mode
    assert sorted((r["mode"], r["source"], r["id"]) for r in records) == [
        ("box", "coco", "1"), ("box", "coco", "2"), ("direct", "coco", "1"), ("direct", "coco", "2")]
    polyp = next(r for r in records if r["mode"] == "box" and r["id"] == "1")
    assert polyp["ignored"] == 50 and polyp["n_boxes"] == 2 and polyp["target_area"] > 0
    mask_file = out / "masks" / "box" / "coco_instances_val_1_polyp.png"
    assert np.asarray(Image.open(mask_file)).shape == (40, 60)
    # direct mode on a ReasonSeg set alone: its short-phrase case names a concept, the sentence one does not
    config = EvalConfig(data=[tmp_path / "rs"], split=None, modes=["direct"], out=tmp_path / "out2")
    run_eval(config, segmenter=metered, progress=False, log=lambda _: None)
    records = lines(tmp_path / "out2" / "results.jsonl")
    assert [(r["id"], r["concept"], r["ignored"]) for r in records] == [("short", "sofa", 0)]


def test_target_boxes_per_component_or_union():
    mask = np.zeros((20, 30), bool)
    mask[2:5, 3:7] = True
    mask[10:15, 20:28] = True
    boxes = target_boxes(mask, "component")
    assert sorted(b.as_list() for b in boxes) == [[3, 2, 7, 5], [20, 10, 28, 15]]
    assert [b.as_list() for b in target_boxes(mask, "union")] == [[3, 2, 28, 15]]
    assert target_boxes(np.zeros((4, 4), bool)) == []


def test_agent_mode_answers_questions_through_the_agent(tmp_path, metered, data_root):
    agent_module = pytest.importorskip("agent")
    if not hasattr(agent_module, "Agent"):
        pytest.skip("agent.Agent is not written yet")
    root = DATA / "kvasir_seg"
    manifest = (root / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    row = next(json.loads(x) for x in manifest if '"val"' in x)
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("\n".join(json.dumps(r) for r in [
        {"id": "named", "image": str(root / row["image"]), "question": "Segment the polyp.",
         "masks": {"polyp": str(root / row["masks"]["polyp"])}, "dataset": "kvasir_seg"},
        {"id": "none", "image": str(root / row["image"]), "question": "Is there a breast tumor in this image?",
         "masks": {}, "concepts": ["breast tumor"]},
    ]), encoding="utf-8")
    out = tmp_path / "out"
    config = EvalConfig(questions=qfile, modes=["agent"], out=out)
    run_eval(config, segmenter=metered, progress=False, log=lambda _: None)
    records = {r["id"]: r for r in lines(out / "results.jsonl")}
    assert set(records) == {"named", "none"}
    for r in records.values():
        assert r["error"] is None, r["error"]
        assert isinstance(r["answer"], str) and r["answer"] and r["planner"]
    assert records["named"]["target_area"] > 0 and records["none"]["target_empty"]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    rows = {(r["mode"], r["dataset"], r["concept"]): r for r in summary["rows"]}
    assert rows[("agent", "q", "breast tumor")]["presence_acc"] in (0.0, 1.0)
    assert rows[("agent", "kvasir_seg", "polyp")]["n"] == 1


@pytest.mark.slow
def test_box_mode_quality_on_real_polyps(data_root, tmp_path, metered):
    config = EvalConfig(data=[data_root], modes=["box"], datasets=["kvasir_seg"], limit=8, out=tmp_path / "o")
    outcome = run_eval(config, segmenter=metered, progress=False, log=lambda _: None)
    row = next(r for r in outcome.summary if (r["mode"], r["dataset"], r["concept"]) == ("box", "kvasir_seg", "*"))
    assert row["n"] == 8 and row["errors"] == 0
    assert row["dice"] > 0.7  # a tight box is a strong prompt for LiteMedSAM's decoder


def test_box_prompt_without_text_and_worker_processes_give_the_same_records(tmp_path, metered):
    coco = write_coco(tmp_path / "coco")
    base = {"data": [coco], "split": None, "modes": ["box"], "box_text": False, "hd95": False}
    run_eval(EvalConfig(**base, out=tmp_path / "one"), segmenter=metered, progress=False, log=lambda _: None)
    one = sorted(lines(tmp_path / "one" / "results.jsonl"), key=lambda r: r["key"])
    assert [r["presence"] for r in one] == [1.0, 1.0]  # boxes alone are geometric prompts: no presence gate
    assert "box prompts: component, without text" in (tmp_path / "one" / "report.md").read_text(encoding="utf-8")
    # two spawned workers, each loading its own model, score the same cases the same way
    run_eval(EvalConfig(**base, out=tmp_path / "two", workers=2), progress=False, log=lambda _: None)
    two = sorted(lines(tmp_path / "two" / "results.jsonl"), key=lambda r: r["key"])
    strip = ("seconds", "encode_seconds")
    assert [{k: v for k, v in r.items() if k not in strip} for r in two] == [
        {k: v for k, v in r.items() if k not in strip} for r in one]
