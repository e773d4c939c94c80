"""Measurement cases (CDR, CTR) in the eval: ratios on drawn masks by hand, their MAE in summary.json and
report.md, a drawn fundus picture through the real MedSAM3-Lite, and a shared Drishti-GS1 case where present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA
from PIL import Image

from evals.config import EvalConfig
from evals.loaders import load_manifest
from evals.measures import ratio
from evals.modes import MeteredSegmenter
from evals.report import write_report
from evals.runner import assign_modes, run_eval
from evals.summary import FIELDS, summarize


@pytest.fixture(scope="module")
def metered(segmenter):
    return MeteredSegmenter(segmenter.backend)


def block(shape, y0, y1, x0, x1) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_ratios_on_drawn_masks_by_hand():
    disc, cup = block((80, 80), 20, 60, 20, 60), block((80, 80), 30, 50, 30, 50)  # 40 rows, 20 rows
    assert ratio({"optic disc": disc, "optic cup": cup}, "cdr") == pytest.approx(0.5)
    lungs = block((100, 100), 10, 70, 10, 45) | block((100, 100), 10, 70, 55, 90)  # widest row: cols 10..89
    heart = block((100, 100), 40, 80, 38, 62)  # 24 px wide
    assert ratio({"cardiomediastinum": heart, "lung": lungs}, "ctr") == pytest.approx(24 / 80)
    with pytest.raises(ValueError, match="non-empty"):
        ratio({"optic disc": disc, "optic cup": np.zeros((80, 80), bool)}, "cdr")


def record(mode, dataset, image, measure, value, reference, *, error=None, unmeasured=None):
    concept = {"cdr": "cup-to-disc ratio", "ctr": "cardiothoracic ratio"}[measure]
    return {"mode": mode, "key": f"{dataset}/{image}#{concept}", "id": image, "dataset": dataset, "concept": concept,
            "source": "measure", "image": image, "error": error, "measure": measure, "value": value,
            "reference": reference, "abs_error": None if value is None else abs(value - reference),
            "unmeasured": unmeasured, "seconds": 0.5, "encode_seconds": 0.0}


def test_mean_absolute_error_in_summary_and_report(tmp_path):
    records = [
        record("direct", "fundus", "a", "cdr", 0.60, 0.50),
        record("direct", "fundus", "b", "cdr", 0.40, 0.70),
        record("direct", "fundus", "c", "cdr", None, 0.55, unmeasured="no optic cup found"),
        record("direct", "fundus", "d", "cdr", None, 0.50, error="RuntimeError: broken"),
        record("direct", "cxr", "e", "ctr", 0.45, 0.50),
    ]
    rows = summarize(records)
    assert all(tuple(r) == FIELDS for r in rows)
    index = {(r["mode"], r["dataset"], r["concept"]): r for r in rows}
    assert set(index) == {("direct", "fundus", "cup-to-disc ratio"), ("direct", "*", "cup-to-disc ratio"),
                          ("direct", "cxr", "cardiothoracic ratio"), ("direct", "*", "cardiothoracic ratio")}
    cdr = index[("direct", "fundus", "cup-to-disc ratio")]
    assert (cdr["n"], cdr["n_measured"], cdr["errors"]) == (4, 2, 1)
    assert cdr["mae"] == pytest.approx((0.1 + 0.3) / 2) and cdr["dice"] is None
    assert index[("direct", "*", "cardiothoracic ratio")]["mae"] == pytest.approx(0.05)
    text = write_report(tmp_path, rows, records, {}).read_text(encoding="utf-8")
    assert "| direct | fundus | cup-to-disc ratio | 4 | 2 | 0.2000 | 1 |" in text
    assert "| direct | c | cup-to-disc ratio | – | 0.550 | no optic cup found |" in text
    assert "| direct | a | cup-to-disc ratio | 0.600 | 0.500 | 0.100 |" in text


def write_fundus(root: Path) -> Path:
    """A drawn fundus-like picture: an orange field, a bright disc (rows 40-120) and a paler cup (rows 60-100)."""
    (root / "images").mkdir(parents=True)
    yy, xx = np.mgrid[:200, :240]
    image = np.zeros((200, 240, 3), np.uint8)
    image[...] = (150, 60, 30)
    disc = (yy - 80) ** 2 + (xx - 120) ** 2 < 40**2
    cup = (yy - 80) ** 2 + (xx - 120) ** 2 < 20**2
    image[disc] = (240, 200, 120)
    image[cup] = (255, 245, 220)
    Image.fromarray(image).save(root / "images" / "f1.png")
    masks = {"optic disc": disc, "optic cup": cup}
    paths = {}
    for concept, mask in masks.items():
        path = root / "masks" / concept.replace(" ", "_") / "f1.png"
        path.parent.mkdir(parents=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
        paths[concept] = str(path.relative_to(root))
    row = {"id": "f1", "image": "images/f1.png", "split": "val", "modality": "fundus", "masks": paths}
    (root / "manifest.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    return root


def test_a_drawn_fundus_gives_a_cdr_case_scored_against_its_masks(tmp_path, metered):
    root = write_fundus(tmp_path / "data" / "fundus")
    cases = load_manifest(root / "manifest.jsonl")
    assert [(c.source, c.concept_label) for c in cases] == [
        ("manifest", "optic disc"), ("manifest", "optic cup"), ("measure", "cup-to-disc ratio")]
    assert [c.concept_label for c in load_manifest(root / "manifest.jsonl", concepts=["optic cup"])] == ["optic cup"]
    assert [m for m, _ in assign_modes(cases, ["box"])] == ["box", "box"]  # box takes no measurement case
    out = tmp_path / "out"
    outcome = run_eval(EvalConfig(data=[root], modes=["direct"], out=out, hd95=False), segmenter=metered,
                       progress=False, log=lambda _: None)
    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    records = {r["concept"]: r for r in (json.loads(x) for x in lines)}
    cdr = records["cup-to-disc ratio"]
    assert cdr["error"] is None and cdr["measure"] == "cdr"
    assert cdr["reference"] == pytest.approx(39 / 79, abs=1e-4)  # the drawn cup's rows over the disc's
    row = next(r for r in outcome.summary if r["concept"] == "cup-to-disc ratio" and r["dataset"] == "fundus")
    if cdr["value"] is None:  # the model found no cup or no disc: counted, not measured
        assert cdr["unmeasured"] and row["n_measured"] == 0 and row["mae"] is None
    else:
        assert cdr["abs_error"] == pytest.approx(abs(cdr["value"] - cdr["reference"]), abs=1e-4)
        assert row["n_measured"] == 1 and row["mae"] == pytest.approx(cdr["abs_error"])
    assert "## Measurements" in (out / "report.md").read_text(encoding="utf-8")


def test_shared_drishti_case_is_measured_by_the_real_model(tmp_path, metered):
    if not (DATA / "drishti_gs1" / "manifest.jsonl").is_file():
        pytest.skip("shared Drishti-GS1 not found")
    out = tmp_path / "out"
    config = EvalConfig(data=[DATA], datasets=["drishti_gs1"], modes=["direct"], limit=1, out=out, hd95=False)
    run_eval(config, segmenter=metered, progress=False, log=lambda _: None)
    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    cdr = next(json.loads(x) for x in lines if '"measure": "cdr"' in x)
    assert cdr["error"] is None and 0.3 < cdr["reference"] < 1.0
    assert cdr["value"] is not None and cdr["abs_error"] < 0.3  # disc and cup are concepts the model knows
