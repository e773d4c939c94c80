"""The refine stage (segmenter/lite/refine.py): concept components propose boxes, LiteMedSAM's box decoder
draws inside them; the catalog's ``refine`` field and the global setting."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import catalog_with, dice, read_mask, val_rows

from segmenter.catalog import ConceptCatalog, load_catalog
from segmenter.lite.refine import REFINE_ENV, proposal_boxes, refine_choice, refine_drawn, refine_mode
from segmenter.study_io import load_image


def _logits(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, 8.0, -8.0).astype(np.float32)[None, None]


def test_components_propose_expanded_boxes_clipped_to_the_image():
    mask = np.zeros((256, 256), dtype=bool)
    mask[100:140, 50:90] = True  # 40 x 40: padded by 2 (5% of 40)
    mask[0:10, 150:170] = True  # at the top edge: clipped to 0
    mask[200, 200] = True  # speckle: no box
    mask[:, 220:] = True  # beyond the image's part of the frame (padding): ignored
    boxes = proposal_boxes(_logits(mask), valid=(256, 220))
    assert sorted(boxes[:, 0].tolist()) == [[48.0, 98.0, 92.0, 142.0], [148.0, 0.0, 172.0, 12.0]]


def test_specks_propose_no_box_and_are_dropped_in_box_mode():
    """A part under 5% of the largest and under 0.2% of the image (the planner's speck) costs no box decode."""
    mask = np.zeros((256, 256), dtype=bool)
    mask[20:70, 20:70] = True  # 2500 px: the largest
    mask[150:155, 150:156] = True  # 30 px: under 5% of 2500 (125) and under 0.2% of the frame (131): a speck
    mask[200:212, 100:112] = True  # 144 px: above 0.2% of the frame: a part of its own
    boxes = proposal_boxes(_logits(mask), valid=(256, 256))
    assert len(boxes) == 2 and not any(b[0, 0] <= 150 <= b[0, 2] and b[0, 1] <= 150 <= b[0, 3] for b in boxes)
    calls: list[int] = []
    everywhere = lambda b: calls.append(len(b)) or np.full((len(b), 1, 256, 256), 5.0, np.float32)  # noqa: E731
    drawn = refine_drawn(_logits(mask), "box", everywhere, valid=(256, 256))[0][0, 0] > 0
    assert calls == [2] and not drawn[150:155, 150:156].any() and drawn[20:70, 20:70].all()
    alone = np.zeros((256, 256), dtype=bool)
    alone[150:155, 150:156] = True  # the same 30 px alone is the largest part: not a speck
    assert len(proposal_boxes(_logits(alone), valid=(256, 256))) == 1


def test_box_mode_keeps_each_decoded_mask_inside_its_box():
    mask = np.zeros((256, 256), dtype=bool)
    mask[100:140, 50:90] = True
    everywhere = lambda b: np.full((len(b), 1, 256, 256), 5.0, np.float32)  # noqa: E731 - a decoder that spills over
    out = refine_drawn(_logits(mask), "box", everywhere, valid=(256, 256))[0][0, 0] > 0
    assert out[98:142, 48:92].all() and out.sum() == 44 * 44
    inter = refine_drawn(_logits(mask), "intersection", everywhere, valid=(256, 256))[0][0, 0] > 0
    assert np.array_equal(inter, mask)
    plain = _logits(mask)
    assert refine_drawn(plain, "none", everywhere, valid=(256, 256))[0] is plain
    empty = _logits(np.zeros((256, 256), dtype=bool))
    assert np.array_equal(refine_drawn(empty, "box", everywhere, valid=(256, 256))[0], empty)  # nothing to propose


def test_the_mode_that_drew_the_mask_is_reported():
    """The result says "box" only where the box decoder drew the mask (an empty one: nothing to redraw)."""
    mask = np.zeros((256, 256), dtype=bool)
    mask[100:140, 50:90] = True
    everywhere = lambda b: np.full((len(b), 1, 256, 256), 5.0, np.float32)  # noqa: E731
    assert refine_drawn(_logits(mask), "box", everywhere, valid=(256, 256))[1] == "box"
    assert refine_drawn(_logits(mask), "none", everywhere, valid=(256, 256))[1] == "none"
    assert refine_drawn(_logits(np.zeros_like(mask)), "box", everywhere, valid=(256, 256))[1] == "box"
    specks = np.zeros((256, 256), dtype=bool)
    specks[10, 10] = specks[200, 30] = True  # too small to propose a box: kept as the concept decoder drew them
    logits, drawn = refine_drawn(_logits(specks), "box", everywhere, valid=(256, 256))
    assert drawn == "none" and np.array_equal(logits[0, 0] > 0, specks)


def test_box_refine_on_a_real_polyp_draws_inside_the_concept_masks_boxes(segmenter):
    row = val_rows("kvasir_seg", 1)[0]  # skips where the shared data is absent
    image, truth = load_image(row["image"]), read_mask(row["masks"]["polyp"])
    backend, saved = segmenter.backend, segmenter.backend.refine
    try:
        backend.refine = "none"
        plain_result = segmenter.segment(image, concept="polyp")
        backend.refine = "box"
        boxed_result = segmenter.segment(image, concept="polyp")
        geometry = segmenter.segment(image, boxes=[boxed_result.instances[0].box])
    finally:
        backend.refine = saved
    plain, boxed = plain_result.union_mask, boxed_result.union_mask
    # the result says how its masks were drawn (the offline planner skips its box round for "box")
    assert (plain_result.refine, boxed_result.refine, geometry.refine) == ("none", "box", "none")
    assert boxed_result.summary()["refine"] == "box" and "refine" not in plain_result.summary()
    assert plain.any() and boxed.any() and not np.array_equal(plain, boxed)
    ys, xs = np.nonzero(plain)
    model_px = max(image.shape[:2]) / 256  # image pixels per model pixel
    py, px = (0.05 * (v.max() - v.min() + 1) + 4 * model_px for v in (ys, xs))  # expansion + resampling
    outside = boxed.copy()
    outside[int(ys.min() - py) : int(ys.max() + py) + 1, int(xs.min() - px) : int(xs.max() + px) + 1] = False
    assert not outside.any()
    assert dice(boxed, truth) > 0.85  # the stock decoder's outline of the first val polyp (plain: .93)


def test_refine_setting_and_per_concept_mode(monkeypatch):
    monkeypatch.delenv(REFINE_ENV, raising=False)
    assert refine_choice() == "catalog" and refine_choice("BOX") == "box"
    monkeypatch.setenv(REFINE_ENV, "none")
    assert refine_choice() == "none"
    monkeypatch.setenv(REFINE_ENV, "sharpen")
    with pytest.raises(ValueError, match=f"{REFINE_ENV}='sharpen'.*catalog, none, box"):
        refine_choice()
    polyp = load_catalog().get("polyp")
    assert refine_mode("none", polyp) == "none" and refine_mode("catalog", None) == "none"
    assert refine_mode("catalog", polyp) == polyp.refine


def test_catalog_validates_the_refine_field():
    assert all(c.refine in ("none", "box", "union", "intersection") for c in load_catalog().concepts)
    ConceptCatalog.model_validate(catalog_with(lung={"refine": "box"}))
    with pytest.raises(ValueError, match="refine"):
        ConceptCatalog.model_validate(catalog_with(polyp={"refine": "sharpen"}))
    with pytest.raises(ValueError, match="lateral concept is segmented as its base; set 'refine' on 'lung'"):
        ConceptCatalog.model_validate(catalog_with(**{"left lung": {"refine": "box"}}))
