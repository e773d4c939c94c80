"""Measurements: sizes on drawn masks of known geometry, the CDR and CTR on drawn anatomy, the measure tool
through the executor, the offline planner measuring what a question asks (an oracle segmenter on a drawn
image, with and without a pixel spacing), and the real model stating a CDR on a Drishti-GS1 val image."""

from __future__ import annotations

import math
import re

import cv2
import numpy as np
import pytest
from agent_helpers import OracleBackend
from conftest import read_mask, val_rows
from PIL import Image

from agent import Agent
from agent.measure_intent import measure_intent
from agent.planners.base import ThreadMasks
from agent.store import MemoryMaskStore
from segmenter import Segmenter
from segmenter.study import Geometry, Study
from tools.context import ToolContext
from tools.executor import run_tool
from tools.measure import area, cardiothoracic, cup_to_disc, describe, diameters, measure, volume
from tools.schemas import Candidate, ToolCall


def ellipse(h: int, w: int, center: tuple[int, int], axes: tuple[int, int], angle: float = 0.0) -> np.ndarray:
    """A filled ellipse; ``center`` (x, y) and ``axes`` (semi-axes) in pixels, as OpenCV draws them."""
    canvas = np.zeros((h, w), np.uint8)
    cv2.ellipse(canvas, center, axes, angle, 0, 360, 1, -1)
    return canvas.astype(bool)


# --- sizes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("r", "s"), [(40, 0.7), (25, 0.2)])
def test_a_disc_has_area_pi_r2_and_diameter_2r(r, s):
    yy, xx = np.mgrid[:200, :220]
    disc = (yy - 90) ** 2 + (xx - 100) ** 2 <= r * r  # pixel centres within r: 2r + 1 pixels across
    geometry = Geometry(pixel_spacing=(s, s))
    found = area(disc, geometry, "disc")
    assert found.unit == "mm²" and found.spacing_known
    assert found.value == pytest.approx(math.pi * r * r * s * s, rel=0.04)
    assert found.pixels == disc.sum() and found.percent_of_image == pytest.approx(100 * disc.sum() / disc.size)
    longest, across = diameters(disc, geometry, "disc")
    assert longest.unit == across.unit == "mm"
    assert abs(longest.value - 2 * r * s) <= s + 1e-6  # within a pixel
    assert abs(across.value - 2 * r * s) <= s + 1e-6


def test_an_ellipse_has_its_axes_as_diameters_whatever_its_angle():
    shape = ellipse(240, 240, (120, 120), (70, 25), angle=35)
    longest, across = diameters(shape, Geometry())
    assert abs(longest.value - 140) <= 1.5 and abs(across.value - 50) <= 1.5
    assert longest.unit == "px" and not longest.spacing_known
    box = cv2.boundingRect(shape.astype(np.uint8))
    # the outline's diameters, not the bounding box's diagonal or sides
    assert longest.value < math.hypot(box[2], box[3]) - 5 and across.value < min(box[2], box[3]) - 30


def test_anisotropic_spacing_counts_each_axis_in_its_own_millimetres():
    bar = np.zeros((30, 80), bool)
    bar[10, 10:60] = True  # one row, 50 columns
    longest, across = diameters(bar, Geometry(pixel_spacing=(0.5, 2.0)))
    assert longest.value == pytest.approx(100.0) and across.value == pytest.approx(0.5)
    assert longest.pixels == pytest.approx(50.0)


def test_a_block_has_its_volume_in_millilitres_or_voxels():
    block = np.zeros((10, 50, 50), bool)
    block[2:6, 10:30, 5:15] = True  # 4 x 20 x 10 voxels
    found = volume(block, Geometry(pixel_spacing=(2.0, 2.0), slice_spacing=3.0), "tumor", [1])
    assert found.unit == "mL" and found.value == pytest.approx(800 * 12 / 1000) and found.pixels == 800
    unknown = volume(block, Geometry(pixel_spacing=(2.0, 2.0)))  # no slice spacing: voxels
    assert unknown.unit == "voxels" and unknown.value == 800 and not unknown.spacing_known
    sizes = {m.kind: m for m in measure({"tumor": {1: block}}, Geometry(pixel_spacing=(1.0, 1.0), slice_spacing=1.0))}
    assert sizes["volume"].value == pytest.approx(0.8) and sizes["area"].slice_index == 2  # largest slice


def test_unknown_spacing_says_pixels_and_percent_of_the_image():
    found = measure({"polyp": {3: ellipse(100, 100, (50, 50), (20, 10))}}, Geometry())
    text = describe(found)
    assert "mm" not in text and "px²" in text and "% of the image" in text
    assert "pixel spacing was unknown" in text
    assert [m.kind for m in found] == ["count", "area", "longest diameter", "perpendicular diameter"]
    known = describe(measure({"polyp": {3: ellipse(100, 100, (50, 50), (20, 10))}}, Geometry(pixel_spacing=(1, 1))))
    assert "mm²" in known and "unknown" not in known


def test_an_empty_or_malformed_mask_is_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        diameters(np.zeros((10, 10), bool), Geometry(), "cup")
    with pytest.raises(ValueError, match="shape"):
        area(np.zeros((2, 2, 2, 2), bool), Geometry())


# --- ratios -----------------------------------------------------------------------------------------


def test_vertical_cup_to_disc_ratio_and_its_threshold_wording():
    disc = ellipse(200, 200, (100, 100), (50, 50))  # 101 rows
    wide_cup = ellipse(200, 200, (100, 100), (40, 30))  # 61 rows tall, wider than tall: vertical counts
    found = cup_to_disc(wide_cup, disc)
    assert found.value == pytest.approx(61 / 101) and "at or above the usual 0.6 threshold" in found.sentence
    small = cup_to_disc(ellipse(200, 200, (100, 100), (20, 20)), disc)
    assert small.value == pytest.approx(41 / 101) and "below the usual 0.6 threshold" in small.sentence


def chest(heart_half_width: int) -> tuple[np.ndarray, np.ndarray]:
    """Two drawn lungs (the thorax spans columns 30..269 at its widest) and a heart between them."""
    h, w = 300, 300
    lungs = ellipse(h, w, (90, 150), (60, 120)) | ellipse(h, w, (210, 150), (60, 120))
    heart = ellipse(h, w, (150, 200), (heart_half_width, 50))
    return heart, lungs


def test_cardiothoracic_ratio_from_drawn_lungs_and_heart():
    heart, lungs = chest(70)
    found = cardiothoracic(heart, lungs)
    assert found.value == pytest.approx(141 / 241) and "above the usual 0.5 threshold" in found.sentence
    normal = cardiothoracic(*chest(50))
    assert normal.value == pytest.approx(101 / 241) and "at or below the usual 0.5 threshold" in normal.sentence
    # both lungs together: one lung alone is not the thorax
    ratios = measure({"cardiomediastinum": {1: heart}, "left lung": {2: lungs & (np.arange(300) < 150)},
                      "right lung": {3: lungs & (np.arange(300) >= 150)}}, Geometry(), "ctr")
    assert [m.kind for m in ratios] == ["cardiothoracic ratio"] and ratios[0].value == pytest.approx(found.value)


# --- the tool -----------------------------------------------------------------------------------------


def test_measure_runs_through_the_executor_with_the_run_geometry():
    heart, lungs = chest(70)
    masks = ThreadMasks(MemoryMaskStore(), "t")
    masks.put({1: heart, 2: lungs})
    cands = [Candidate(id=i, concept=c, score=0.9, box=[0, 0, 1, 1], area=int(m.sum()), prompt=c)
             for i, c, m in ((1, "cardiomediastinum", heart), (2, "lung", lungs))]
    ctx = ToolContext(image=np.zeros((300, 300, 3), np.uint8), segmenter=None,  # type: ignore[arg-type]
                      masks=masks, candidates=cands, geometry=Geometry(pixel_spacing=(0.2, 0.2)))
    result = run_tool(ToolCall(name="measure", arguments={"ids": [1, 2], "what": "ctr"}), ctx)
    assert result.ok and result.kind == "examine" and result.ids == [1, 2]
    assert [m.kind for m in result.measurements] == ["cardiothoracic ratio"] and "0.59" in result.text
    sizes = run_tool(ToolCall(name="measure", arguments={"ids": [1]}), ctx)
    assert {m.unit for m in sizes.measurements} == {"instances", "mm²", "mm"}
    wrong = run_tool(ToolCall(name="measure", arguments={"ids": [1], "what": "cdr"}), ctx)
    assert wrong.status == "failed" and "optic disc" in (wrong.error or "")
    unknown = run_tool(ToolCall(name="measure", arguments={"ids": [7]}), ctx)
    assert unknown.status == "failed" and "unknown mask id" in (unknown.error or "")
    bad = run_tool(ToolCall(name="measure", arguments={"ids": [1], "what": "weight"}), ctx)
    assert bad.status == "invalid"


@pytest.mark.parametrize(("question", "what", "needs"), [
    ("Is the heart enlarged?", "ctr", ["lung", "cardiomediastinum"]),
    ("any cardiomegaly?", "ctr", ["lung", "cardiomediastinum"]),
    ("What is the cup-to-disc ratio?", "cdr", ["optic disc", "optic cup"]),
    ("how many nuclei are there", "count", []),
    ("what is the diameter of the polyp", "diameter", []),
    ("how big is the lesion?", None, []),
])
def test_questions_asking_for_a_measurement(question, what, needs):
    intent = measure_intent(question)
    assert intent is not None and intent.what == what and intent.needs == needs


def test_questions_asking_for_none():
    assert measure_intent("find the polyps") is None and measure_intent("segment the optic cup and disc") is None


# --- the agent ----------------------------------------------------------------------------------------


@pytest.fixture()
def drawn_fundus(tmp_path):
    """A drawn fundus-like picture with an optic disc and cup, and an oracle segmenter over their masks."""
    image = np.full((240, 320, 3), (150, 60, 30), np.uint8)
    disc, cup = ellipse(240, 320, (160, 120), (40, 40)), ellipse(240, 320, (160, 120), (18, 26))
    image[disc] = (230, 180, 90)
    image[cup] = (250, 230, 180)
    Image.fromarray(image).save(tmp_path / "fundus.png")
    for name, mask in (("disc", disc), ("cup", cup)):
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / f"{name}.png")
    oracle = OracleBackend({str(tmp_path / "fundus.png"): {"optic disc": str(tmp_path / "disc.png"),
                                                          "optic cup": str(tmp_path / "cup.png")}})
    return image, disc, cup, Agent(planner="offline", segmenter=Segmenter(oracle))


def test_the_offline_planner_measures_a_cdr_and_sizes_in_millimetres(drawn_fundus):
    image, disc, cup, agent = drawn_fundus
    result = agent.run("What is the cup-to-disc ratio?", image=image)
    assert [e.data.get("name") for e in result.trace if e.kind == "tool_call"][-1] == "measure"
    (cdr,) = result.measurements
    assert cdr.kind == "cup-to-disc ratio" and cdr.value == pytest.approx(53 / 81)
    assert "The cup-to-disc ratio is 0.65" in result.answer and "at or above the usual 0.6 threshold" in result.answer
    # a one-slice study carries its spacing: sizes in mm, and a follow-up keeps the thread's geometry
    study = Study.from_rgb(image, Geometry(pixel_spacing=(0.01, 0.01)))
    sized = agent.run("how big is the optic disc?", image=study, thread_id="t1")
    area_mm2 = next(m for m in sized.measurements if m.kind == "area")
    assert area_mm2.unit == "mm²" and area_mm2.value == pytest.approx(disc.sum() * 1e-4)
    assert re.search(r"optic disc 1: area [\d.]+ mm²", sized.answer) and "unknown" not in sized.answer
    again = agent.run("how wide is it?", thread_id="t1")
    assert {m.unit for m in again.measurements} == {"mm"} and "mm" in again.answer
    photo = agent.run("how big is the optic disc?", image=image)
    assert "px²" in photo.answer and "pixel spacing was unknown" in photo.answer


def test_the_round_limit_still_leaves_room_to_measure(drawn_fundus):
    image, *_, oracle = drawn_fundus
    agent = Agent(planner="offline", segmenter=oracle.segmenter, max_rounds=0)  # no box-refinement round
    result = agent.run("What is the cup-to-disc ratio?", image=image)
    assert result.rounds == 1 and [m.kind for m in result.measurements] == ["cup-to-disc ratio"]


def test_a_multi_slice_study_goes_to_the_volume_path_which_takes_no_follow_ups(drawn_fundus):
    image, *_, agent = drawn_fundus  # volumes themselves: tests/test_volume.py
    with pytest.raises(ValueError, match="one run"):
        agent.run("how big is the optic disc?", image=Study(slices=np.stack([image, image])), thread_id="t")


def test_result_json_carries_the_measurements(drawn_fundus, tmp_path):
    import json

    image, *_, agent = drawn_fundus
    result = agent.run("What is the cup-to-disc ratio?", image=image)
    saved = json.loads((result.save(tmp_path / "out") / "result.json").read_text(encoding="utf-8"))
    (cdr,) = saved["measurements"]
    assert cdr["kind"] == "cup-to-disc ratio" and cdr["unit"] == "ratio" and cdr["threshold"] == 0.6
    assert cdr["text"].startswith("cup-to-disc ratio 0.65")


def test_the_real_model_states_a_cdr_on_a_drishti_val_image(segmenter):
    row = val_rows("drishti_gs1", limit=1)[0]
    result = Agent(planner="offline", segmenter=segmenter).run("What is the cup-to-disc ratio?", image=row["image"])
    stated = re.search(r"The cup-to-disc ratio is (\d\.\d\d)", result.answer)
    assert stated is not None, result.answer
    truth = cup_to_disc(read_mask(row["masks"]["optic cup"]), read_mask(row["masks"]["optic disc"])).value
    assert abs(float(stated.group(1)) - truth) < 0.15, (stated.group(1), truth)
