"""Laterality as geometry: "left X"/"right X" = segment X, keep the patient's side by the image's orientation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import dice, read_mask, val_rows

from segmenter import Segmenter
from segmenter.base import SegmenterBackend
from segmenter.catalog import load_catalog
from segmenter.laterality import LateralityError, lateral_instances, midline, orientation
from segmenter.study import Geometry
from segmenter.types import Box, Instance, Prompt, SegmentationResult

H, W = 64, 100


def _blob(x0: int, x1: int, y0: int = 10, y1: int = 50) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


# two "lungs": a big one on the image's left (x 10..40), a smaller one on the image's right (x 60..85)
IMAGE_LEFT, IMAGE_RIGHT = _blob(10, 40), _blob(60, 85)


def _affine(col_ras: tuple[float, float, float], row_ras: tuple[float, float, float] = (0.0, -1.0, 0.0)):
    """(slice, row, col) -> RAS with the given row and column directions (slice along +S)."""
    a = np.eye(4)
    a[:3, 0] = (0.0, 0.0, 1.0)
    a[:3, 1] = row_ras
    a[:3, 2] = col_ras
    return Geometry(affine=tuple(tuple(float(v) for v in r) for r in a))


# an axial DICOM as stored: columns run toward the patient's left (LPS +x = RAS -x), rows toward posterior
AXIAL = _affine((-1.0, 0.0, 0.0))
FLIPPED = _affine((1.0, 0.0, 0.0))  # columns toward the patient's right (neurological display)
SAGITTAL = _affine((0.0, 1.0, 0.0), row_ras=(0.0, 0.0, -1.0))  # no left-right axis in the plane


class DrawnBackend(SegmenterBackend):
    """Answers "lung" with the drawn instances (and any concept of ``others`` with its masks); records prompts."""

    name = "drawn"

    def __init__(self, masks: list[np.ndarray], presence: float = 0.9,
                 others: dict[str, list[np.ndarray]] | None = None) -> None:
        self.masks, self.presence, self.prompts, self.others = masks, presence, [], others or {}

    def set_image(self, image: np.ndarray) -> str:
        return "drawn"

    def concepts(self) -> list[str]:
        return ["lung"]

    def segment(self, prompt: Prompt) -> SegmentationResult:
        self.prompts.append(prompt)
        masks = self.masks if prompt.concept == "lung" else self.others.get(prompt.concept or "", [])
        instances = [Instance.from_mask(m, 0.8) for m in masks] if self.presence >= 0.5 else []
        return SegmentationResult(prompt=prompt, instances=instances, presence=self.presence, image_size=(H, W),
                                  backend=self.name)


def _side(side: str, geometry: Geometry | None, masks=(IMAGE_LEFT, IMAGE_RIGHT)) -> np.ndarray:
    found = lateral_instances([Instance.from_mask(m, 0.8) for m in masks], side, orientation(geometry), (H, W))
    union = np.zeros((H, W), dtype=bool)
    for inst in found:
        union |= inst.mask
    return union


def test_radiological_convention_without_an_affine():
    # no orientation: the patient's right on the image's left (PA chest X-ray, axial slice)
    assert np.array_equal(_side("right", None), IMAGE_LEFT)
    assert np.array_equal(_side("left", None), IMAGE_RIGHT)
    assert np.array_equal(_side("left", Geometry()), IMAGE_RIGHT)  # a geometry without an affine too


def test_an_axial_affine_agrees_and_a_flipped_column_axis_swaps_sides():
    assert np.array_equal(_side("left", AXIAL), IMAGE_RIGHT)
    assert np.array_equal(_side("left", FLIPPED), IMAGE_LEFT)
    assert np.array_equal(_side("right", FLIPPED), IMAGE_RIGHT)
    assert orientation(FLIPPED).describe().startswith("image orientation")
    assert "the patient's left on the image's left" in orientation(FLIPPED).describe()


def test_left_right_along_the_rows_and_a_sagittal_slice_is_refused():
    # an image turned by 90 degrees: rows run toward the patient's left
    turned = _affine((0.0, -1.0, 0.0), row_ras=(-1.0, 0.0, 0.0))
    top, bottom = _blob(20, 80, 5, 25), _blob(20, 80, 40, 60)
    assert np.array_equal(_side("left", turned, (top, bottom)), bottom)
    assert np.array_equal(_side("right", turned, (top, bottom)), top)
    with pytest.raises(LateralityError, match="no left-right axis"):
        orientation(SAGITTAL)


def test_a_component_crossing_the_midline_is_split_there():
    # the two lungs' centroids (x 24.5 and 72) put the midline at 48.25; a bridge joins them over it
    bridge = _blob(38, 62, 20, 30)
    joined = IMAGE_LEFT | IMAGE_RIGHT | bridge
    assert midline(IMAGE_LEFT | IMAGE_RIGHT, axis=1) == pytest.approx((24.5 + 72) / 2)
    # one component: the image centre (x 49.5) is the midline, and each side gets its half of the bridge
    left, right = _side("left", None, (joined,)), _side("right", None, (joined,))
    assert not (left & right).any() and np.array_equal(left | right, joined)
    assert np.nonzero(left)[1].min() == 50 and np.nonzero(right)[1].max() == 49
    # a speckle on one side does not move the midline (it is not the other organ)
    speckle = _blob(90, 93, 55, 58)
    assert midline(IMAGE_LEFT | speckle, axis=1) == pytest.approx((W - 1) / 2)


def test_segmenter_routes_a_lateral_concept_to_its_base_and_states_the_convention():
    backend = DrawnBackend([IMAGE_LEFT, IMAGE_RIGHT])
    seg = Segmenter(backend)
    image = np.zeros((H, W, 3), dtype=np.uint8)
    result = seg.segment(image, "the patient's left lung")
    assert [p.concept for p in backend.prompts] == ["lung", "left lung"]  # the base first, then its own entry
    assert result.prompt.concept == "the patient's left lung"
    assert np.array_equal(result.union_mask, IMAGE_RIGHT)
    assert result.laterality and result.laterality.startswith("radiological convention")
    assert result.summary()["laterality"] == result.laterality
    # the geometry given with the image reaches the segment calls of a handle
    handle = seg.handle(image, geometry=FLIPPED)
    flipped = handle.segment(concept="left lung")
    assert np.array_equal(flipped.union_mask, IMAGE_LEFT) and flipped.laterality.startswith("image orientation")
    assert handle.handle(image).segment(concept="right lung").union_mask[30, 70]  # a sub-handle keeps it
    # plain concepts and box prompts go to the backend as given, with no laterality
    assert seg.segment(image, "lung").laterality is None
    seg.segment(image, "left lung", boxes=[Box(x0=50, y0=5, x1=95, y1=60)])
    assert backend.prompts[-1].concept == "left lung" and backend.prompts[-1].boxes
    with pytest.raises(LateralityError):
        seg.segment(image, "left lung", geometry=SAGITTAL)


def test_the_lateral_concepts_own_mask_adds_only_on_the_geometric_side():
    # the lateral concept's own mask reaches over the midline (as "right lung" did): only its own side counts
    extra = _blob(5, 70, 50, 60)  # below both lungs, from x 5 to x 69
    backend = DrawnBackend([IMAGE_LEFT, IMAGE_RIGHT], others={"right lung": [extra]})
    result = Segmenter(backend).segment(np.zeros((H, W, 3), dtype=np.uint8), "right lung")
    assert [p.concept for p in backend.prompts] == ["lung", "right lung"]
    cut = int((24.5 + 72) / 2)  # the midline of the two lungs: x 48.25
    expected = IMAGE_LEFT | (extra & (np.arange(W) <= cut)[None, :])
    assert np.array_equal(result.union_mask, expected) and len(result.instances) == 1  # joined into one


def test_the_base_concepts_presence_gate_applies():
    seg = Segmenter(DrawnBackend([IMAGE_LEFT, IMAGE_RIGHT], presence=0.1))
    result = seg.segment(np.zeros((H, W, 3), dtype=np.uint8), "right lung")
    assert not result.found and result.presence == pytest.approx(0.1)


def test_catalog_says_which_concepts_are_paired():
    catalog = load_catalog()
    assert catalog.get("lung").paired
    side, base = catalog.lateral("Left lung field")
    assert (side, base.name) == ("left", "lung")
    assert catalog.lateral("right lungs")[0] == "right"  # "right" + a synonym of a paired concept
    assert catalog.lateral("lung") is None and catalog.lateral("right ventricle") is None
    assert catalog.lateral("left cardiomediastinum") is None  # not a paired organ


def test_real_chest_xray_left_and_right_lung(segmenter):
    """The shipped model on a real PA chest X-ray (val): each side against its ground truth."""
    row = val_rows("covid_cxr_lungs", limit=1)[0]
    scores = {side: dice(segmenter.segment(row["image"], f"{side} lung").union_mask,
                         read_mask(row["masks"][f"{side} lung"])) for side in ("left", "right")}
    # measured on cxr_009: left .881, right .940 (asked of the sentence embedding before: .865 / .629)
    assert scores["left"] >= 0.85 and scores["right"] >= 0.85, scores


def test_the_convention_reaches_result_json_through_the_agent(segmenter, tmp_path):
    from agent import Agent

    image = val_rows("covid_cxr_lungs", limit=1)[0]["image"]
    result = Agent(planner="offline", segmenter=segmenter).run("outline the right lung", image=image)
    saved = json.loads((result.save(tmp_path) / "result.json").read_text(encoding="utf-8"))
    texts = [event["text"] for event in saved["trace"] if event["kind"] == "tool_result"]
    assert any("sides: radiological convention" in text for text in texts), texts


def test_a_one_slice_studys_affine_orients_the_agents_lateral_prompt():
    """Agent.run on a one-slice Study with a flipped affine: 'left lung' follows the affine, not the convention."""
    from agent import Agent
    from segmenter.study import Study

    image = np.zeros((H, W, 3), dtype=np.uint8)
    agent = Agent(planner="offline", segmenter=Segmenter(DrawnBackend([IMAGE_LEFT, IMAGE_RIGHT])))
    for geometry, expected in ((None, IMAGE_RIGHT), (FLIPPED, IMAGE_LEFT)):
        result = agent.run("outline the left lung", image=Study.from_rgb(image, geometry))
        union = np.zeros((H, W), dtype=bool)
        for mask in result.masks:
            union |= mask.mask
        assert np.array_equal(union, expected), result.answer
