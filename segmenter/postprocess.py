"""Probability map -> instances: threshold, connected components, per-instance scores."""

from __future__ import annotations

import cv2
import numpy as np

from segmenter.types import Instance

SPECK_OF_LARGEST = 0.05  # a part smaller than this share of its concept's largest part...
SPECK_OF_IMAGE = 0.002  # ...and than this share of the image is a speck


def is_speck(area: float, largest: float, image_area: float, of_largest: float = SPECK_OF_LARGEST) -> bool:
    """Whether a part of a concept's mask is a speck, too small to be a finding of its own: under ``of_largest``
    of the concept's largest part and under ``SPECK_OF_IMAGE`` of the image. The offline planner drops specks;
    the Lite refine stage draws no box for them (segmenter/lite/refine.py)."""
    return area < of_largest * largest and area < SPECK_OF_IMAGE * image_area


def split_instances(
    prob: np.ndarray,
    *,
    presence: float = 1.0,
    mask_threshold: float = 0.5,
    min_area: int = 16,
    max_instances: int = 200,
) -> list[Instance]:
    """Connected components of ``prob > mask_threshold``, largest first.

    Each instance's score is its mean foreground probability times ``presence``, so a
    confident mask of an absent concept still scores low. Components under ``min_area``
    pixels are dropped as speckle.
    """
    binary = (prob > mask_threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    order = sorted(range(1, count), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    instances = []
    for label in order[:max_instances]:
        if stats[label, cv2.CC_STAT_AREA] < min_area:
            continue
        mask = labels == label
        score = float(prob[mask].mean()) * presence
        instances.append(Instance.from_mask(mask, score))
    return instances
