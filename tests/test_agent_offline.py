"""The offline planner end to end: the real MedSAM3-Lite on real val images, and an oracle segmenter
(ground-truth masks) where the planner's own logic is under test (multi-concept, follow-ups, negatives).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from agent_helpers import OracleBackend
from conftest import dice, read_mask, val_rows
from PIL import Image

from agent import Agent
from segmenter import Segmenter
from segmenter.study_io import load_image


def oracle_agent(rows: list[dict], **options) -> Agent:
    cases = {str(r["image"]): {c: str(p) for c, p in r["masks"].items()} for r in rows}
    return Agent(planner="offline", segmenter=Segmenter(OracleBackend(cases)), **options)


def concept_masks(result) -> dict[str, np.ndarray]:
    return {m.concept: m.mask for m in result.masks}


# --- the real model -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def offline(segmenter) -> Agent:
    return Agent(planner="offline", segmenter=segmenter)


def test_find_the_polyps_writes_overlay_masks_and_result_json(offline, tmp_path):
    row = val_rows("kvasir_seg", limit=1)[0]
    image = load_image(row["image"])
    result = offline.run("find the polyps", image=row["image"])
    assert result.planner == "offline" and result.concepts_tried[0] == "polyp"
    assert "offline planner" in result.answer
    assert result.union_mask().shape == image.shape[:2] and result.overlay.shape == image.shape
    assert all(m.concept == "polyp" for m in result.masks)
    nodes = [e.node for e in result.trace]
    assert nodes.index("plan") < nodes.index("tools") < nodes.index("inspect") < nodes.index("answer")
    out = result.save(tmp_path / "run")
    data = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert data["answer"] == result.answer and data["planner"] == "offline" and data["concepts_tried"]
    assert Image.open(out / "overlay.png").size == (image.shape[1], image.shape[0])
    for entry in data["masks"]:
        union = np.asarray(Image.open(out / entry["path"]))
        assert union.shape == image.shape[:2] and set(np.unique(union)) <= {0, 255}
        for inst in entry["instances"]:
            assert (out / inst["path"]).is_file() and len(inst["box"]) == 4


def test_ambiguous_word_is_resolved_from_the_image(offline):
    row = val_rows("busi", limit=1)[0]
    result = offline.run("Segment the lesion.", image=row["image"])
    assert result.concepts_tried[0] == "breast tumor"
    assert "read as breast tumor" in result.answer and "ultrasound" in result.answer


def test_image_is_encoded_once_per_run(segmenter):
    row = val_rows("drishti_gs1", limit=1)[0]
    agent = Agent(planner="offline", segmenter=segmenter)
    before = segmenter.backend.encode_count
    result = agent.run("outline the optic disc and the cup", image=row["image"])
    assert sorted(result.concepts_tried) == ["optic cup", "optic disc"]
    assert segmenter.backend.encode_count - before <= 1  # every prompt (text and box) reused one embedding


def _box_round(result) -> list[str]:
    """The concepts of the box-refinement round's calls in a run's trace, one per call."""
    return [e.data["concept"] for e in result.trace if e.kind == "tool_result" and e.data["name"] == "segment_geometry"]


def test_masks_the_segmenter_redrew_from_their_boxes_get_no_second_box_round(offline):
    """Polyp and optic disc are refined by box in MedSAM3-Lite (concepts.json); the optic cup is not."""
    polyp = val_rows("kvasir_seg", limit=1)[0]
    result = offline.run("find the polyps", image=polyp["image"])
    assert result.masks and _box_round(result) == [] and result.rounds == 1
    fundus = val_rows("drishti_gs1", limit=1)[0]
    result = offline.run("outline the optic disc and the cup", image=fundus["image"])
    assert sorted(m.concept for m in result.masks) == ["optic cup", "optic disc"]
    assert _box_round(result) == ["optic cup"] and result.rounds == 2


def test_polyp_gets_its_box_round_back_when_the_segmenter_does_not_refine(segmenter):
    row = val_rows("kvasir_seg", limit=1)[0]
    backend, saved = segmenter.backend, segmenter.backend.refine
    try:
        backend.refine = "none"  # as MEDSAM3_REFINE=none sets it
        result = Agent(planner="offline", segmenter=segmenter).run("find the polyps", image=row["image"])
    finally:
        backend.refine = saved
    assert result.masks and set(_box_round(result)) == {"polyp"} and result.rounds == 2


def test_polyps_on_a_fundus_photo_end_with_nothing_found(offline):
    row = val_rows("drishti_gs1", limit=1)[0]
    result = offline.run("find the polyps", image=row["image"])
    assert result.masks == [] and not result.union_mask().any()
    assert result.answer.startswith("Nothing was found") and "fundus" in result.answer


@pytest.mark.slow
def test_busi_normal_image_ends_with_nothing_found(offline):
    row = next(r for r in val_rows("busi") if r["label"] == "normal")
    result = offline.run("Is there a mass in this breast ultrasound?", image=row["image"])
    assert result.masks == [] and result.answer.startswith("Nothing was found")


@pytest.mark.slow
def test_agent_dice_is_close_to_the_segmenters_own(segmenter):
    agent = Agent(planner="offline", segmenter=segmenter)
    agent_dice, direct_dice = [], []
    for row in val_rows("kvasir_seg", limit=8):
        truth = read_mask(row["masks"]["polyp"])
        result = agent.run("find the polyps", image=row["image"])
        agent_dice.append(dice(result.union_mask(), truth))
        direct_dice.append(dice(segmenter.segment(row["image"], "polyp").union_mask, truth))
    print(f"kvasir val x{len(agent_dice)}: agent Dice {np.mean(agent_dice):.3f}, segmenter {np.mean(direct_dice):.3f}")
    assert np.mean(agent_dice) >= np.mean(direct_dice) - 0.05


# --- the planner's logic, over ground-truth masks ----------------------------------------------------------


@pytest.fixture(scope="module")
def fundus():
    return val_rows("drishti_gs1", limit=1)[0]


def test_multi_concept_question_keeps_each_structure(fundus):
    result = oracle_agent([fundus]).run("Outline the optic disc and the cup.", image=fundus["image"])
    masks = concept_masks(result)
    assert sorted(masks) == ["optic cup", "optic disc"]
    for concept, mask in masks.items():
        # box refinement must not swap the cup for the disc around it
        assert dice(mask, read_mask(fundus["masks"][concept])) > 0.99
    assert result.rounds == 2  # first masks, then each re-segmented with its own box


def test_follow_ups_work_on_the_previous_answer(fundus):
    agent = oracle_agent([fundus])
    first = agent.run("Outline the optic disc and the cup.", image=fundus["image"], thread_id="eye")
    only_cup = agent.run("now only the cup", thread_id="eye")
    assert list(concept_masks(only_cup)) == ["optic cup"]
    assert np.array_equal(concept_masks(only_cup)["optic cup"], concept_masks(first)["optic cup"])
    assert only_cup.answer.startswith("From the previous answer")
    both = agent.run("also the optic disc", thread_id="eye")
    assert sorted(concept_masks(both)) == ["optic cup", "optic disc"]
    without = agent.run("without the cup", thread_id="eye")
    assert list(concept_masks(without)) == ["optic disc"]


def test_only_the_largest_one():
    row = val_rows("covid_cxr_lungs", limit=1)[0]
    agent = oracle_agent([row])
    lungs = agent.run("Segment the lungs.", image=row["image"], thread_id="cxr")
    assert len(lungs.masks[0].instances) == 2  # two lung fields
    largest = agent.run("now only the largest one", thread_id="cxr")
    assert len(largest.masks) == 1 and len(largest.masks[0].instances) == 1
    assert largest.masks[0].instances[0].area == max(i.area for i in lungs.masks[0].instances)


def test_no_target_ends_empty_not_forced():
    normal = next(r for r in val_rows("busi") if r["label"] == "normal")
    result = oracle_agent([normal]).run("Is there a mass?", image=normal["image"])
    assert result.concepts_tried == ["breast tumor"]
    assert result.masks == [] and result.answer.startswith("Nothing was found")


def test_round_limit_zero_skips_refinement(fundus):
    result = oracle_agent([fundus], max_rounds=0).run("Segment the optic disc.", image=fundus["image"])
    assert result.rounds == 1 and len(result.masks) == 1


def test_image_may_be_a_path_an_array_or_pil(fundus):
    agent = oracle_agent([fundus])
    array = load_image(fundus["image"])
    results = [agent.run("Segment the optic disc.", image=img)
               for img in (fundus["image"], array, Image.fromarray(array))]
    assert all(np.array_equal(r.union_mask(), results[0].union_mask()) for r in results)


def test_one_off_runs_leave_no_thread_behind(fundus):
    agent = oracle_agent([fundus])
    agent.run("Segment the optic disc.", image=fundus["image"])
    assert list(agent.checkpointer.list(None)) == []


def test_bad_input_is_a_clear_error(fundus, tmp_path):
    agent = oracle_agent([fundus])
    with pytest.raises(ValueError, match="question is empty"):
        agent.run("  ", image=fundus["image"])
    with pytest.raises(ValueError, match="no image"):
        agent.run("find the cup", thread_id="new-thread")
    with pytest.raises(ValueError, match="no such file"):
        agent.run("find the cup", image=tmp_path / "missing.png")
    with pytest.raises(ValueError, match="max_rounds"):
        Agent(planner="offline", segmenter=agent.segmenter, max_rounds=-1)
    with pytest.raises(ValueError, match="unknown planner"):
        Agent(planner="gpt", segmenter=agent.segmenter)


def test_stream_ends_with_the_result(fundus):
    events = list(oracle_agent([fundus]).stream("Segment the optic cup.", image=fundus["image"]))
    assert events[-1].kind == "answer" and events[-1].result is not None and events[-1].result.answer == events[-1].text
    assert {"plan", "tool_call", "tool_result", "overlay", "verdict"} <= {e.kind for e in events}
    assert all(e.ms >= 0 for e in events)


def unsure_image() -> np.ndarray:
    """A drawn disc whose modality the image statistics cannot tell, and where no finding is expected."""
    from agent.modality import guess_modality

    yy, xx = np.mgrid[:240, :320]
    disc = (yy - 120) ** 2 + (xx - 160) ** 2 < 50**2
    for seed in range(2000):
        rng = np.random.default_rng(seed)
        background, foreground = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        image = np.where(disc[..., None], foreground, background).astype(np.uint8)
        guess = guess_modality(image)
        if guess.confidence < 0.5 and guess.modality in ("fundus", "histopathology", "x-ray"):
            return image
    raise AssertionError("no drawn disc left the modality guess unsure")


def test_presence_probes_run_as_tool_calls_in_the_trace(tmp_path):
    image = unsure_image()
    yy, xx = np.mgrid[:240, :320]
    tumour = (yy - 120) ** 2 + (xx - 160) ** 2 < 50**2  # the drawn disc
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(tumour.astype(np.uint8) * 255).save(tmp_path / "tumour.png")
    backend = OracleBackend({str(tmp_path / "img.png"): {"brain tumor": str(tmp_path / "tumour.png")}})
    agent = Agent(planner="offline", segmenter=Segmenter(backend))
    # "tumor" may mean any finding (polyp, skin lesion, breast or brain tumour); the image cannot say which, the
    # segmenter's presence scores do
    result = agent.run("Segment the tumor.", image=tmp_path / "img.png")
    calls = [e for e in result.trace if e.kind == "tool_call" and e.data.get("probe")]
    probed = [e for e in result.trace if e.kind == "tool_result" and e.data.get("probe")]
    findings = ["brain tumor", "breast tumor", "polyp", "skin lesion"]
    assert sorted(e.data["arguments"]["concept"] for e in calls) == findings
    assert {e.data["concept"]: e.data["presence"] for e in probed} == {c: 0.95 if c == "brain tumor" else 0.05
                                                                         for c in findings}
    assert all(e.node == "tools" and e.data["ids"] == [] for e in probed)  # a probe keeps no candidate
    assert result.concepts_tried == ["brain tumor"] and [m.concept for m in result.masks] == ["brain tumor"]
    assert "most present in the image (presence 0.95)" in result.answer
    assert dice(result.union_mask(), tumour) > 0.99
    first, second = [e for e in result.trace if e.kind == "plan"]  # asks for the probes, then plans with them
    assert [c["probe"] for c in first.data["calls"]] == [True] * 4
    assert [c["arguments"] for c in second.data["calls"]] == [{"concept": "brain tumor"}]
