"""Segmentation metrics: per case, then aggregated per dataset / concept / overall.

Per case (``score_case``): Dice, IoU and HD95 of a predicted mask against a target, with
ignore pixels removed from both first. By convention an empty prediction on an empty target
scores Dice = IoU = 1 (the right answer is "nothing there"), and exactly one empty scores 0.

Aggregated (``aggregate``), following the usual definitions:

- ``dice`` / ``iou``: mean per-case value over cases whose target is not empty (the paper-table
  numbers; empty targets are scored by ``presence_acc`` instead).
- ``giou``: mean per-case IoU over all cases, empty-on-empty counting 1 (LISA / ReasonSeg).
- ``ciou``: sum of intersections / sum of unions over all cases (LISA / ReasonSeg).
- ``presence_acc``: presence specificity: on cases with an empty target (``n_neg`` of them: BUSI normal
  images, tumour-free slices, a concept asked of an image without it), the share whose prediction is empty too.
- ``presence_sens``: presence sensitivity: on cases with a non-empty target (``n_pos``), the share whose
  prediction is not empty (a mask was returned at all, however well it overlaps).
- ``hd95``: mean 95th-percentile Hausdorff distance (pixels) over cases where both masks are
  non-empty; computed by MONAI (``compute_hausdorff_distance(percentile=95)``: the larger of
  the two directed 95th percentiles of boundary distances).
- ``hd95_mm``: the same in millimetres, for volumes (S, H, W) scored with their voxel spacing;
  a volume's Dice and IoU are over all its voxels (volumetric Dice), one volume one case.

A metric that does not apply to a group (no non-empty targets, no empty targets, ...) is None.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import numpy as np
from pydantic import BaseModel


def _binary(mask: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D mask or a 3D (slice, row, col) volume, got shape {array.shape}")
    return array.astype(bool) if array.dtype != bool else array


def _prepare(
    pred: np.ndarray, target: np.ndarray, ignore: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, int]:
    pred, target = _binary(pred, "prediction"), _binary(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"prediction is {pred.shape} but target is {target.shape}; masks must be the same size")
    if ignore is None:
        return pred, target, 0
    ignore = _binary(ignore, "ignore mask")
    if ignore.shape != target.shape:
        raise ValueError(f"ignore mask is {ignore.shape} but target is {target.shape}")
    keep = ~ignore
    return pred & keep, target & keep, int(ignore.sum())


def dice(pred: np.ndarray, target: np.ndarray, ignore: np.ndarray | None = None) -> float:
    pred, target, _ = _prepare(pred, target, ignore)
    total = int(pred.sum()) + int(target.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & target).sum()) / total


def iou(pred: np.ndarray, target: np.ndarray, ignore: np.ndarray | None = None) -> float:
    pred, target, _ = _prepare(pred, target, ignore)
    union = int((pred | target).sum())
    return 1.0 if union == 0 else int((pred & target).sum()) / union


def hd95(pred: np.ndarray, target: np.ndarray, ignore: np.ndarray | None = None,
         spacing: tuple[float, ...] | None = None) -> float | None:
    """95th-percentile Hausdorff distance (MONAI); None when either mask is empty.

    In pixels, or in millimetres with ``spacing`` (one per mask axis: (slice, row, col) for a volume).
    """
    pred, target, _ = _prepare(pred, target, ignore)
    if spacing is not None and len(spacing) != pred.ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} values for a {pred.ndim}D mask")
    if not pred.any() or not target.any():
        return None
    import torch
    from monai.metrics import compute_hausdorff_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI warns about its own internal deprecated argument
        value = compute_hausdorff_distance(
            torch.from_numpy(pred)[None, None], torch.from_numpy(target)[None, None], percentile=95,
            spacing=None if spacing is None else [float(v) for v in spacing],
        )
    distance = float(value.reshape(-1)[0])
    return distance if math.isfinite(distance) else None


class CaseScore(BaseModel):
    """One case's counts and scores; the aggregate is computed from these alone."""

    target_area: int
    pred_area: int
    intersection: int
    union: int
    ignored: int
    target_empty: bool
    pred_empty: bool
    dice: float
    iou: float
    hd95: float | None = None
    hd95_mm: float | None = None  # volumes: HD95 in millimetres (their voxel spacing)


def score_case(
    pred: np.ndarray, target: np.ndarray, ignore: np.ndarray | None = None, *, with_hd95: bool = True,
    spacing: tuple[float, ...] | None = None,
) -> CaseScore:
    """Counts and scores of one case; with ``spacing`` (a volume's (slice, row, col) mm) HD95 goes to ``hd95_mm``."""
    pred, target, ignored = _prepare(pred, target, ignore)
    distance = hd95(pred, target, spacing=spacing) if with_hd95 else None
    inter = int((pred & target).sum())
    union = int((pred | target).sum())
    t_area, p_area = int(target.sum()), int(pred.sum())
    return CaseScore(
        target_area=t_area,
        pred_area=p_area,
        intersection=inter,
        union=union,
        ignored=ignored,
        target_empty=t_area == 0,
        pred_empty=p_area == 0,
        dice=1.0 if t_area + p_area == 0 else 2.0 * inter / (t_area + p_area),
        iou=1.0 if union == 0 else inter / union,
        hd95=distance if spacing is None else None,
        hd95_mm=distance if spacing is not None else None,
    )


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def aggregate(scores: Iterable[CaseScore]) -> dict[str, float | int | None]:
    """n, dice, iou, giou, ciou, presence_acc / presence_sens (with n_neg / n_pos), hd95, hd95_mm over a group of
    cases (see the module doc)."""
    scores = list(scores)
    positive = [s for s in scores if not s.target_empty]
    negative = [s for s in scores if s.target_empty]
    union = sum(s.union for s in scores)
    hd = [s.hd95 for s in positive if s.hd95 is not None]
    hd_mm = [s.hd95_mm for s in positive if s.hd95_mm is not None]
    return {
        "n": len(scores),
        "dice": _mean([s.dice for s in positive]),
        "iou": _mean([s.iou for s in positive]),
        "giou": _mean([s.iou for s in scores]),
        "ciou": sum(s.intersection for s in scores) / union if union else None,
        "presence_acc": _mean([1.0 if s.pred_empty else 0.0 for s in negative]),
        "presence_sens": _mean([0.0 if s.pred_empty else 1.0 for s in positive]),
        "n_pos": len(positive),
        "n_neg": len(negative),
        "hd95": _mean(hd),
        "hd95_mm": _mean(hd_mm),
    }
