"""Abdominal organs (liver, kidneys, spleen) on real MR slices, segmented by the shipped experts (the liver by
segmenter/lite/weights/liver/, the others by segmenter/lite/weights/abdomen/), and left / right kidney as geometry;
on CT slices (a study that says CT) by segmenter/lite/weights/abdomen_ct/."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dice, read_mask, val_rows

from segmenter.study import Geometry

# loose floors well under the val Dice in the experts' model cards: they catch a broken expert or routing
CASES = [("liver", 0.75), ("kidney", 0.55), ("spleen", 0.55)]


def _rows_with(concept: str, limit: int, dataset: str = "chaos_mr_t2", split: str = "val") -> list[dict]:
    """The slices where the organ is largest (its first slices are its poles, a few pixels wide)."""
    rows = [row for row in val_rows(dataset, split=split) if concept in row["masks"]]
    return sorted(rows, key=lambda row: -int(read_mask(row["masks"][concept]).sum()))[:limit]


def test_the_abdominal_concepts_are_served_by_the_shipped_experts(segmenter):
    backend = segmenter.backend
    assert {"abdomen", "abdomen_ct", "liver"} <= set(backend.info()["experts"])
    for name in ("kidney", "left kidney", "right kidney", "spleen", "renal"):
        assert backend._expert_name(backend.catalog.get(name)) == "abdomen"
    for name in ("liver", "hepatic"):
        assert backend._expert_name(backend.catalog.get(name)) == "liver"
    assert backend._expert_name(backend.catalog.get("polyp")) == ""  # the main weights, unchanged
    for name in ("liver", "kidney", "left kidney", "right kidney", "spleen"):  # on a CT, the CT expert
        assert backend._expert_name(backend.catalog.get(name), "CT") == "abdomen_ct"
        assert backend._expert_name(backend.catalog.get(name), "MR") == backend._expert_name(backend.catalog.get(name))
    assert backend._expert_name(backend.catalog.get("polyp"), "CT") == ""


@pytest.mark.slow
@pytest.mark.parametrize("concept", ["kidney", "left kidney"])
def test_a_ct_slice_that_says_ct_is_segmented_by_the_ct_expert(segmenter, concept):
    """3D-IRCADb (evaluation only, never trained on): the MR experts miss these organs on CT; the CT expert,
    chosen by the study's modality, finds them (loose floor: a broken route or expert fails it)."""
    ct, unknown = Geometry(modality="CT"), Geometry()
    scores = {"CT": [], "unknown": []}
    for row in _rows_with(concept, 3, "ircadb_ct", "train"):
        target = read_mask(row["masks"][concept])
        for name, geometry in (("CT", ct), ("unknown", unknown)):
            result = segmenter.segment(row["image"], concept, geometry=geometry)
            assert result.prompt.modality == geometry.modality
            scores[name].append(dice(result.union_mask, target))
    assert np.mean(scores["CT"]) >= 0.3 and np.mean(scores["CT"]) > np.mean(scores["unknown"]) + 0.2, scores


@pytest.mark.slow
@pytest.mark.parametrize("concept, floor", CASES)
def test_abdominal_organ_dice_on_mr_val_slices(segmenter, concept, floor):
    scores = [dice(segmenter.segment(row["image"], concept).union_mask, read_mask(row["masks"][concept]))
              for row in _rows_with(concept, 3)]
    assert np.mean(scores) >= floor, scores


@pytest.mark.slow
def test_left_and_right_kidney_are_the_patients_sides_in_radiological_display(segmenter):
    row = next(r for r in _rows_with("kidney", 10) if "left kidney" in r["masks"] and "right kidney" in r["masks"])
    left = segmenter.segment(row["image"], "left kidney").union_mask
    right = segmenter.segment(row["image"], "right kidney").union_mask
    assert left.any() and right.any()
    # the patient's left is on the image's right (as the labels are): each mask overlaps its own side's label
    assert dice(left, read_mask(row["masks"]["left kidney"])) > dice(left, read_mask(row["masks"]["right kidney"]))
    assert dice(right, read_mask(row["masks"]["right kidney"])) > dice(right, read_mask(row["masks"]["left kidney"]))
    assert np.nonzero(left)[1].mean() > np.nonzero(right)[1].mean()


@pytest.mark.slow
def test_no_liver_in_a_colonoscopy_image(segmenter):
    colon = val_rows("kvasir_seg", limit=1)[0]["image"]
    assert not segmenter.segment(colon, "liver").found
