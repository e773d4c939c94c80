"""evals.summary and evals.report from hand-made records (no model), and the runner's case selection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.cases import EvalCase, MaskFiles
from evals.report import write_report
from evals.runner import assign_modes, read_results
from evals.summary import FIELDS, summarize


def record(mode, dataset, concept, image, *, inter, union, t_area, p_area, seconds=1.0, encode=0.0, error=None,
           category=None):
    dice = 1.0 if t_area + p_area == 0 else 2 * inter / (t_area + p_area)
    return {"category": category,
        "mode": mode, "key": f"{dataset}/{image}#{concept}", "dataset": dataset, "concept": concept,
        "image": image, "error": error, "target_area": t_area, "pred_area": p_area, "intersection": inter,
        "union": union, "ignored": 0, "target_empty": t_area == 0, "pred_empty": p_area == 0, "dice": dice,
        "iou": 1.0 if union == 0 else inter / union, "hd95": None, "seconds": seconds, "encode_seconds": encode,
    }


RECORDS = [
    # two concepts on one image: the image is encoded once (by the first direct case)
    record("direct", "lungs", "left lung", "a.png", inter=8, union=24, t_area=16, p_area=16, seconds=0.5, encode=2.0),
    record("direct", "lungs", "right lung", "a.png", inter=16, union=16, t_area=16, p_area=16, seconds=0.5),
    record("direct", "busi", "breast tumor", "b.png", inter=0, union=0, t_area=0, p_area=0, seconds=1.0, encode=1.0),
    record("direct", "busi", "breast tumor", "c.png", inter=0, union=4, t_area=0, p_area=4, seconds=1.0, encode=1.0),
    record("direct", "busi", "breast tumor", "d.png", inter=0, union=0, t_area=0, p_area=0, error="ImageError: bad"),
    record("box", "lungs", "left lung", "a.png", inter=16, union=16, t_area=16, p_area=16, seconds=0.25),
]


def test_summary_rows_are_flat_and_aggregate_with_stars():
    rows = summarize(RECORDS)
    assert all(tuple(r) == FIELDS for r in rows)
    index = {(r["mode"], r["dataset"], r["concept"]): r for r in rows}
    assert set(index) == {
        ("direct", "lungs", "left lung"), ("direct", "lungs", "right lung"), ("direct", "lungs", "*"),
        ("direct", "busi", "breast tumor"), ("direct", "busi", "*"),
        ("direct", "*", "left lung"), ("direct", "*", "right lung"), ("direct", "*", "breast tumor"),
        ("direct", "*", "*"), ("box", "lungs", "left lung"), ("box", "lungs", "*"), ("box", "*", "left lung"),
        ("box", "*", "*"),
    }
    lungs = index[("direct", "lungs", "*")]
    assert lungs["n"] == 2 and lungs["dice"] == pytest.approx(0.75)
    assert lungs["ciou"] == pytest.approx(24 / 40, abs=1e-4)
    assert lungs["presence_acc"] is None
    busi = index[("direct", "busi", "*")]
    # the failed case is counted in errors and scored as the empty prediction it delivered (right on d.png,
    # whose target is empty too)
    assert busi["n"] == 3 and busi["errors"] == 1
    assert busi["dice"] is None and busi["presence_acc"] == pytest.approx(2 / 3, abs=1e-4)
    assert busi["giou"] == pytest.approx(2 / 3, abs=1e-4) and busi["ciou"] == 0.0
    overall = index[("direct", "*", "*")]
    # rows round to 4 places
    assert overall["n"] == 5 and overall["giou"] == pytest.approx((1 / 3 + 1 + 1 + 0 + 1) / 5, abs=1e-4)


def test_failures_lower_the_headline_metrics_and_stay_in_the_errors_column(tmp_path):
    ok = record("agent", "kvasir", "polyp", "a.png", inter=8, union=24, t_area=16, p_area=16, category="lay")
    # the planner failed on b.png: the runner scored its empty prediction against the 16-pixel target
    failed = {**record("agent", "kvasir", "polyp", "b.png", inter=0, union=16, t_area=16, p_area=0,
                       category="lay"), "error": "PlannerError: endpoint down"}
    # c.png could not be read at all: no target, no scores; a miss
    unread = {"mode": "agent", "key": "kvasir/c.png#polyp", "dataset": "kvasir", "concept": "polyp",
              "image": "c.png", "error": "ImageError: not a readable image", "category": "lay"}
    row = {(r["mode"], r["dataset"], r["concept"]): r for r in summarize([ok, failed, unread])}[
        ("agent", "kvasir", "*")]
    assert row["n"] == 3 and row["errors"] == 2
    assert row["dice"] == pytest.approx(0.5 / 3, abs=1e-4)  # (0.5 + 0 + 0) / 3, not 0.5 over the one success
    assert row["giou"] == pytest.approx((1 / 3) / 3, abs=1e-4)
    assert row["ciou"] == pytest.approx(8 / (24 + 16), abs=1e-4)  # the unread case adds nothing it cannot know
    assert row["seconds_per_case"] == pytest.approx(1.0)  # timing is over the cases that ran
    text = write_report(tmp_path, summarize([ok, failed, unread]), [ok, failed, unread], {}).read_text(encoding="utf-8")
    assert "| agent | lay | 3 | 0.1667 | 0.1111 | 0.2000 | – | 2 |" in text


def test_seconds_per_case_shares_each_image_encode_among_its_cases():
    index = {(r["mode"], r["dataset"], r["concept"]): r for r in summarize(RECORDS)}
    # lungs: (0.5 + 0.5 own) + 2.0 encode of a.png, over 2 cases
    assert index[("direct", "lungs", "*")]["seconds_per_case"] == pytest.approx((1.0 + 2.0) / 2)
    # a mode that found the embedding cached is still charged the encode it would have needed alone
    assert index[("box", "lungs", "*")]["seconds_per_case"] == pytest.approx(0.25 + 2.0)
    assert index[("direct", "busi", "*")]["seconds_per_case"] == pytest.approx((2.0 + 2.0) / 2)


def test_report_has_the_paper_table_with_quoted_numbers_and_plots(tmp_path):
    rows = summarize(RECORDS)
    info = {"command": "medsam3-agent eval --data x --out y", "started": "now",
            "identity": {"backend": "lite", "weights": "shipped", "box_strategy": "component"},
            "config": {"split": "val", "modes": ["direct", "box"]}}
    path = write_report(tmp_path, rows, RECORDS, info)
    text = path.read_text(encoding="utf-8")
    assert "medsam3-agent eval --data x --out y" in text
    table = text.split("## Dice by dataset")[1].split("\n\n")[1].splitlines()
    assert table[0].startswith("| Dataset | U-Net (quoted) | MedSAM (quoted) | SAM 3 (quoted) | MedSAM-3 (quoted) |")
    assert "Ours: text (direct)" in table[0] and "Ours: text + GT box (box)" in table[0]
    busi = next(line for line in table if line.startswith("| busi"))
    assert "0.7618 | 0.7514 | 0.7110 | 0.7772" in busi and busi.endswith("| – | – |")  # no non-empty busi target
    lungs = next(line for line in table if line.startswith("| lungs"))
    assert lungs == "| lungs | – | – | – | – | 0.7500 | 1.0000 |"
    assert any(line.startswith("| RIM-ONE (paper only)") for line in table)
    assert "## By dataset and concept" in text  # lungs has two concepts
    assert "ImageError: bad" in text
    assert (tmp_path / "dice_lungs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![dice_lungs](dice_lungs.png)" in text


def case(key, *, question=None, concepts=("polyp",)):
    return EvalCase(key=key, id=key, dataset="d", source="reasoning" if question else "manifest",
                    image=Path(f"{key}.png"), concepts=list(concepts), question=question, target=MaskFiles())


def test_modes_pick_concept_cases_for_direct_and_questions_for_the_agent():
    concept = [case("c1"), case("c2")]
    questions = [case("q1", question="where is the polyp?"), case("q2", question="anything?", concepts=())]
    tasks = assign_modes(concept + questions, ["direct", "box", "agent"])
    assert [(m, c.key) for m, c in tasks] == [
        ("direct", "c1"), ("direct", "c2"), ("box", "c1"), ("box", "c2"), ("agent", "q1"), ("agent", "q2")]
    # no question cases: the agent is asked about the concept cases (with a templated question)
    assert [(m, c.key) for m, c in assign_modes(concept, ["agent"])] == [("agent", "c1"), ("agent", "c2")]
    # no concept cases: direct takes the questions that name a concept
    assert [(m, c.key) for m, c in assign_modes(questions, ["direct"])] == [("direct", "q1")]


def test_results_reader_keeps_the_latest_record_and_skips_a_torn_line(tmp_path):
    path = tmp_path / "results.jsonl"
    lines = [{"mode": "direct", "key": "a", "error": "boom"}, {"mode": "direct", "key": "a", "error": None},
             {"mode": "box", "key": "a", "error": None}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"mode": "dir', encoding="utf-8")
    records = read_results(path)
    assert set(records) == {("direct", "a"), ("box", "a")}
    assert records[("direct", "a")]["error"] is None


def test_report_breaks_reasoning_questions_down_by_category(tmp_path):
    records = [
        {**record("agent", "busi", "breast tumor", "a.png", inter=8, union=24, t_area=16, p_area=16),
         "category": "lay"},
        {**record("agent", "busi", "breast tumor", "b.png", inter=16, union=16, t_area=16, p_area=16),
         "category": "lay"},
        {**record("agent", "busi", "none", "c.png", inter=0, union=0, t_area=0, p_area=0), "category": "negative"},
    ]
    text = write_report(tmp_path, summarize(records), records, {}).read_text(encoding="utf-8")
    section = text.split("## By question category (reasoning sets)")[1]
    assert "| agent | lay | 2 | 0.7500 | 0.6667 | 0.6000 | – | 0 |" in section
    assert "| agent | negative | 1 | – | 1.0000 | – | 1.0000 | 0 |" in section


def test_presence_sensitivity_and_specificity_per_concept_with_their_counts(tmp_path):
    """BUSI-like: 3 images with a tumour (one missed: empty prediction) and 2 normal ones (one given a mask)."""
    records = [
        record("direct", "busi", "breast tumor", "t1.png", inter=8, union=24, t_area=16, p_area=16),
        record("direct", "busi", "breast tumor", "t2.png", inter=16, union=16, t_area=16, p_area=16),
        record("direct", "busi", "breast tumor", "t3.png", inter=0, union=16, t_area=16, p_area=0),
        record("direct", "busi", "breast tumor", "n1.png", inter=0, union=0, t_area=0, p_area=0),
        record("direct", "busi", "breast tumor", "n2.png", inter=0, union=9, t_area=0, p_area=9),
        record("direct", "lungs", "lung", "x.png", inter=16, union=16, t_area=16, p_area=16),
    ]
    rows = {(r["dataset"], r["concept"]): r for r in summarize(records)}
    busi = rows[("busi", "breast tumor")]
    assert (busi["presence_sens"], busi["n_pos"]) == (pytest.approx(2 / 3, abs=1e-4), 3)
    assert (busi["presence_acc"], busi["n_neg"]) == (0.5, 2)  # presence_acc stays the specificity
    lungs = rows[("lungs", "lung")]
    assert (lungs["presence_sens"], lungs["n_pos"], lungs["presence_acc"], lungs["n_neg"]) == (1.0, 1, None, 0)
    assert (rows[("*", "*")]["n_pos"], rows[("*", "*")]["n_neg"]) == (4, 2)
    text = write_report(tmp_path, list(rows.values()), records, {}).read_text(encoding="utf-8")
    assert "Presence sens. (n+) | Presence spec. (n−)" in text
    assert "| direct | * | breast tumor | 5 | 0.5000 | 0.4444 | 0.4667 | 0.3692 | 0.6667 (3) | 0.5000 (2) |" in text


def test_report_reads_summary_rows_written_before_presence_sensitivity(tmp_path):
    old = [{k: v for k, v in row.items() if k not in ("presence_sens", "n_pos", "n_neg")} for row in summarize(RECORDS)]
    text = write_report(tmp_path, old, RECORDS, {}).read_text(encoding="utf-8")
    assert "| direct | busi | * | 3 | – | – | 0.6667 | 0.0000 | – | 0.6667 |" in text
