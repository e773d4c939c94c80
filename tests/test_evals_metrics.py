"""evals.metrics: hand-computed cases, and agreement with independent libraries (scikit-learn, MedPy)."""

from __future__ import annotations

import numpy as np
import pytest
from medpy.metric.binary import hd95 as medpy_hd95
from scipy import ndimage
from sklearn.metrics import f1_score, jaccard_score

from evals.metrics import aggregate, dice, hd95, iou, score_case


def box_mask(shape, y0, y1, x0, x1):
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


EMPTY = np.zeros((8, 8), dtype=bool)
FULL = np.ones((8, 8), dtype=bool)


def test_empty_prediction_on_empty_target_is_perfect():
    score = score_case(EMPTY, EMPTY)
    assert (score.dice, score.iou, score.hd95) == (1.0, 1.0, None)
    assert score.target_empty and score.pred_empty
    assert (score.intersection, score.union) == (0, 0)


def test_empty_prediction_on_full_target_and_the_reverse_score_zero():
    missed = score_case(EMPTY, FULL)
    assert (missed.dice, missed.iou, missed.hd95) == (0.0, 0.0, None)
    assert (missed.target_area, missed.pred_area, missed.union) == (64, 0, 64)
    hallucinated = score_case(FULL, EMPTY)
    assert (hallucinated.dice, hallucinated.iou) == (0.0, 0.0)
    assert not hallucinated.pred_empty and hallucinated.target_empty


def test_partial_overlap_by_hand():
    # target rows 0-3, prediction rows 2-5 of a 4-wide strip: 8 shared of 16 + 16 pixels
    target = box_mask((8, 8), 0, 4, 0, 4)
    pred = box_mask((8, 8), 2, 6, 0, 4)
    score = score_case(pred, target)
    assert (score.intersection, score.union) == (8, 24)
    assert score.dice == pytest.approx(2 * 8 / 32)
    assert score.iou == pytest.approx(8 / 24)
    assert dice(pred, target) == pytest.approx(0.5) and iou(pred, target) == pytest.approx(1 / 3)


def test_ignore_pixels_are_left_out_of_both_masks():
    target = box_mask((8, 8), 0, 4, 0, 4)
    pred = box_mask((8, 8), 0, 4, 0, 6)  # spills 8 pixels into columns 4-5
    ignore = box_mask((8, 8), 0, 8, 4, 6)
    assert dice(pred, target) == pytest.approx(2 * 16 / 40)
    score = score_case(pred, target, ignore)
    assert score.dice == 1.0 and score.iou == 1.0
    assert score.ignored == 16 and score.pred_area == 16
    # ignoring part of the target too: the ignored target pixels are neither hits nor misses
    ignore2 = box_mask((8, 8), 0, 2, 0, 4)
    score2 = score_case(box_mask((8, 8), 2, 4, 0, 4), target, ignore2)
    assert score2.dice == 1.0 and score2.target_area == 8


def test_mismatched_shapes_raise_a_clear_error():
    with pytest.raises(ValueError, match="same size"):
        score_case(np.zeros((4, 5), bool), np.zeros((5, 4), bool))
    with pytest.raises(ValueError, match="ignore mask"):
        score_case(EMPTY, EMPTY, np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="2D mask or a 3D"):  # volumes are (slice, row, col); nothing else
        dice(np.zeros((2, 2, 2, 2)), np.zeros((2, 2, 2, 2)))


def test_aggregate_by_hand():
    target = box_mask((8, 8), 0, 4, 0, 4)
    partial = score_case(box_mask((8, 8), 2, 6, 0, 4), target)  # I=8, U=24
    perfect = score_case(target, target)  # I=16, U=16
    empty_ok = score_case(EMPTY, EMPTY)
    empty_wrong = score_case(box_mask((8, 8), 0, 1, 0, 2), EMPTY)  # I=0, U=2
    agg = aggregate([partial, perfect, empty_ok, empty_wrong])
    assert agg["n"] == 4
    assert agg["dice"] == pytest.approx((0.5 + 1.0) / 2)  # non-empty targets only
    assert agg["iou"] == pytest.approx((1 / 3 + 1.0) / 2)
    assert agg["giou"] == pytest.approx((1 / 3 + 1.0 + 1.0 + 0.0) / 4)  # empty-on-empty counts 1
    assert agg["ciou"] == pytest.approx((8 + 16) / (24 + 16 + 2))
    assert agg["presence_acc"] == pytest.approx(0.5)


def test_aggregate_marks_metrics_that_do_not_apply_as_none():
    only_empty = aggregate([score_case(EMPTY, EMPTY)])
    assert only_empty["dice"] is None and only_empty["iou"] is None and only_empty["ciou"] is None
    assert only_empty["giou"] == 1.0 and only_empty["presence_acc"] == 1.0
    only_positive = aggregate([score_case(FULL, FULL)])
    assert only_positive["presence_acc"] is None and only_positive["dice"] == 1.0
    assert aggregate([])["n"] == 0 and aggregate([])["giou"] is None


def test_dice_and_iou_match_scikit_learn_on_random_masks():
    rng = np.random.default_rng(1)
    for _ in range(5):
        pred = ndimage.binary_opening(rng.random((48, 40)) > 0.5)
        target = ndimage.binary_opening(rng.random((48, 40)) > 0.45)
        assert dice(pred, target) == pytest.approx(f1_score(target.ravel(), pred.ravel()))
        assert iou(pred, target) == pytest.approx(jaccard_score(target.ravel(), pred.ravel()))


def test_hd95_of_two_single_pixels_is_their_distance():
    a = np.zeros((20, 20), bool)
    b = np.zeros((20, 20), bool)
    a[5, 5] = True
    b[8, 9] = True  # 3-4-5 triangle
    assert hd95(a, b) == pytest.approx(5.0)
    assert medpy_hd95(a, b) == pytest.approx(5.0)


def test_hd95_matches_medpy_where_both_definitions_agree():
    # a shifted copy: the distances are the same in both directions, so MONAI's max of the two
    # directed 95th percentiles equals MedPy's 95th percentile of both together
    square = box_mask((64, 64), 10, 30, 10, 30)
    shifted = box_mask((64, 64), 10, 30, 16, 36)
    assert hd95(shifted, square) == pytest.approx(medpy_hd95(shifted, square))
    yy, xx = np.mgrid[:64, :64]
    disk = (yy - 30) ** 2 + (xx - 30) ** 2 <= 12**2
    disk2 = (yy - 33) ** 2 + (xx - 34) ** 2 <= 12**2
    assert hd95(disk2, disk) == pytest.approx(medpy_hd95(disk2, disk), rel=1e-6)


def test_hd95_is_never_below_medpys_pooled_percentile():
    # max(p95(A->B), p95(B->A)) >= p95(A->B and B->A pooled): a real property of the two definitions
    rng = np.random.default_rng(2)
    for _ in range(6):
        a = ndimage.binary_opening(rng.random((40, 40)) > 0.6, iterations=1)
        b = ndimage.binary_opening(rng.random((40, 40)) > 0.55, iterations=1)
        if a.any() and b.any():
            assert hd95(a, b) >= medpy_hd95(a, b) - 1e-6


def test_hd95_is_none_when_a_mask_is_empty_and_respects_ignore():
    square = box_mask((32, 32), 4, 12, 4, 12)
    assert hd95(np.zeros((32, 32), bool), square) is None
    far_speck = square.copy()
    far_speck[30, 30] = True
    ignore = np.zeros((32, 32), bool)
    ignore[28:, 28:] = True
    assert hd95(far_speck, square, ignore) == 0.0
