"""Refine a concept mask with LiteMedSAM's own box decoder (issue 12: keep the foundation model's generality).

The fine-tuned concept decoder says whether and where a concept is, but draws its outline in the look
of the training images; the stock box decoder was trained on 1.5M medical image-mask pairs and draws
outlines that hold up on images unlike ours. So, per concept (``Concept.refine`` in concepts.json, or
for every concept with ``MEDSAM3_REFINE`` / ``LiteBackend(refine=...)``):

- ``none``: the concept decoder's mask as it is;
- ``box``: each of its connected components proposes its box, expanded a little (the concept mask is
  often a little short of the edge), and the box decoder draws that component's mask inside the box;
  specks (``segmenter.postprocess.is_speck``: under 5% of the largest component and 0.2% of the image, the
  parts the offline planner drops) propose no box and are dropped: a box decode each, they were most of the
  decodes on polyp and breast-ultrasound masks;
- ``union`` / ``intersection``: the box decoder's mask combined with the concept mask.

All in the model's 256 frame, before the logits go back to image size; presence is not changed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import cast

import cv2
import numpy as np

from segmenter.catalog import REFINES, Concept, Refine
from segmenter.postprocess import is_speck

REFINE_ENV = "MEDSAM3_REFINE"
CHOICES: tuple[str, ...] = ("catalog", *REFINES)
EXPAND = 0.05  # of the box's side, on each side
MIN_PAD = 2.0  # model pixels, on each side
MIN_AREA = 4  # model pixels: smaller components propose no box (speckle)
OUTSIDE = -20.0  # logit given to pixels outside every box


def refine_choice(choice: str | None = None) -> str:
    """The refine setting: ``choice``, else ``MEDSAM3_REFINE``, else ``catalog`` (each concept's own)."""
    value = (choice if choice is not None else os.environ.get(REFINE_ENV) or "catalog").strip().lower()
    if value not in CHOICES:
        where = f"{REFINE_ENV}={value!r}" if choice is None else f"refine {value[:40]!r}"
        raise ValueError(f"{where}: choose one of {', '.join(CHOICES)}")
    return value


def refine_mode(choice: str, concept: Concept | None) -> str:
    """The mode for one concept: the global ``choice`` unless it is ``catalog``, else the concept's own."""
    if choice != "catalog":
        return choice
    return concept.refine if concept is not None else "none"


def proposal_boxes(logits: np.ndarray, valid: tuple[int, int], threshold: float = 0.0) -> np.ndarray:
    """(N, 1, 4) boxes (x0, y0, x1, y1, model frame) of the components of ``logits > threshold`` within the
    image's part ``valid`` = (height, width) of the frame, each expanded by ``EXPAND`` / ``MIN_PAD``; specks
    (``is_speck``) and components under ``MIN_AREA`` propose none."""
    nh, nw = valid
    binary = (logits[0, 0, :nh, :nw] > threshold).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    largest = max((int(stats[label, cv2.CC_STAT_AREA]) for label in range(1, count)), default=0)
    boxes = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < MIN_AREA or is_speck(area, largest, nh * nw):
            continue
        px, py = max(MIN_PAD, EXPAND * w), max(MIN_PAD, EXPAND * h)
        boxes.append([max(0.0, x - px), max(0.0, y - py), min(float(nw), x + w + px), min(float(nh), y + h + py)])
    return np.array(boxes, dtype=np.float32).reshape(-1, 1, 4)


def _inside(boxes: np.ndarray, size: int) -> np.ndarray:
    """(N, 1, size, size) bool: each pixel inside its box (pixel centres)."""
    c = np.arange(size, dtype=np.float32) + 0.5
    x0, y0, x1, y1 = (boxes[:, 0, i, None, None] for i in range(4))
    return ((c[None, None, :] >= x0) & (c[None, None, :] <= x1) & (c[None, :, None] >= y0)
            & (c[None, :, None] <= y1))[:, None]


def refine_drawn(
    logits: np.ndarray,
    mode: str,
    decode_boxes: Callable[[np.ndarray], np.ndarray],
    valid: tuple[int, int],
    mask_threshold: float = 0.5,
) -> tuple[np.ndarray, Refine]:
    """The concept decoder's (1, 1, S, S) mask logits redrawn by ``mode``, and the mode that drew them: ``mode``,
    or "none" where the concept mask had only components under ``MIN_AREA`` (they stay as the concept decoder
    drew them; specks beside a larger component propose no box and are dropped, see ``proposal_boxes``). An
    empty mask counts as drawn by ``mode``: there was nothing to redraw. ``decode_boxes`` maps (N, 1, 4)
    model-frame boxes to the box decoder's (N, 1, S, S) logits; each box's mask is kept inside its box."""
    if mode == "none":
        return logits, "none"
    if mode not in REFINES:
        raise ValueError(f"unknown refine mode {mode!r}; choose from {', '.join(REFINES)}")
    applied = cast(Refine, mode)
    threshold = math.log(mask_threshold / (1 - mask_threshold))  # the probability threshold as a logit
    boxes = proposal_boxes(logits, valid, threshold)
    if len(boxes) == 0:  # nothing proposed: the concept mask is empty, or specks only
        nh, nw = valid
        return logits, "none" if bool((logits[0, 0, :nh, :nw] > threshold).any()) else applied
    drawn = decode_boxes(boxes).astype(np.float32)
    drawn = np.where(_inside(boxes, drawn.shape[-1]), drawn, np.float32(OUTSIDE)).max(axis=0, keepdims=True)
    if mode == "box":
        return drawn, applied
    concept = logits.astype(np.float32)
    return (np.maximum(concept, drawn) if mode == "union" else np.minimum(concept, drawn)), applied
