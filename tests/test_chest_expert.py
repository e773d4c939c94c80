"""Chest X-ray concepts (lung, left / right lung, cardiomediastinum) are segmented by the "chest" expert
(segmenter/lite/weights/chest/), on real val X-rays of ../shared/data where present."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dice, read_mask, val_rows

CHEST = ("lung", "lungs", "left lung", "right lung", "cardiomediastinum")


def test_the_chest_concepts_are_served_by_the_chest_expert(segmenter):
    backend = segmenter.backend
    assert "chest" in backend.info()["experts"]
    for name in CHEST:
        assert backend._expert_name(backend.catalog.get(name)) == "chest"
    assert backend._expert_name(backend.catalog.get("optic disc")) == ""  # the main weights, unchanged


@pytest.mark.slow
@pytest.mark.parametrize("concept, floor", [("lung", 0.85), ("cardiomediastinum", 0.7), ("left lung", 0.8)])
def test_chest_expert_dice_on_val_x_rays(segmenter, concept, floor):
    """Loose floors well under the model card's val Dice: a broken expert or route fails them."""
    rows = val_rows("covid_cxr_lungs", limit=3)
    scores = [dice(segmenter.segment(row["image"], concept).union_mask, read_mask(row["masks"][concept]))
              for row in rows]
    assert np.mean(scores) >= floor, scores


@pytest.mark.slow
def test_no_lung_in_a_dermoscopy_image(segmenter):
    skin = val_rows("isic2017", limit=1)[0]["image"]
    assert not segmenter.segment(skin, "lung").found and not segmenter.segment(skin, "cardiomediastinum").found
