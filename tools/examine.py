"""Examine candidate masks: a numbered overlay of all of them, and per mask a crop of the image as it is and
the same crop with the mask's outline (what an MLLM's per-mask check looks at; no tint hides the tissue)."""

from __future__ import annotations

import cv2
import numpy as np

from segmenter.overlay import render_overlay
from tools.context import ToolContext
from tools.schemas import Candidate, ExamineMasksArgs, ToolCall, ToolError, ToolResult

MAX_CROPS = 8  # masks per call: each is a request (MLLM planner) or an image to read
CROP_SIZE = 384  # longest side of a crop
OUTLINE_RGB = (0, 255, 0)  # the prompt names it: prompts/examine_mask.txt
OUTLINE_NAME = "green"


def candidates_overlay(image: np.ndarray, candidates: list[Candidate], masks: dict[int, np.ndarray]) -> np.ndarray:
    """The image with each candidate tinted and labelled by its id (what a planner refers to)."""
    return render_overlay(image, [masks[c.id] for c in candidates], [str(c.id) for c in candidates])


def mask_crops(image: np.ndarray, mask: np.ndarray, *, margin: float = 0.5,
               size: int = CROP_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The region around one mask (``margin`` of its size on each side) resized to ``size``, twice: as it is,
    and with the mask's outline drawn (no tint, no label), so the tissue under the outline stays visible."""
    x, y, bw, bh = cv2.boundingRect(np.asarray(mask, dtype=np.uint8))
    if bw == 0 or bh == 0:
        raise ValueError("cannot crop around an empty mask")
    h, w = mask.shape
    x0, y0 = max(0, int(x - margin * bw)), max(0, int(y - margin * bh))
    x1, y1 = min(w, int(x + bw + margin * bw)), min(h, int(y + bh + margin * bh))
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    scale = size / max(crop.shape[:2])
    out = (max(1, int(crop.shape[1] * scale)), max(1, int(crop.shape[0] * scale)))
    clean = cv2.resize(crop, out, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    # the mask is resized smoothly, then cut at half, so the outline follows the border at the crop's scale
    part = cv2.resize(mask[y0:y1, x0:x1].astype(np.float32), out, interpolation=cv2.INTER_LINEAR) >= 0.5
    contours, _ = cv2.findContours(part.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outlined = clean.copy()
    cv2.drawContours(outlined, contours, -1, OUTLINE_RGB, max(1, size // 192))
    return clean, outlined


def examine_masks(args: ExamineMasksArgs, ctx: ToolContext, call: ToolCall) -> ToolResult:
    """The outlined crop of each asked candidate among those shown (all of them, best first, by default)."""
    known = {c.id: c for c in ctx.shown}
    if not known:
        raise ToolError("there are no candidate masks to examine yet; segment something first")
    unknown = [i for i in args.ids if i not in known]
    if unknown:
        raise ToolError(f"unknown mask id(s) {unknown}; current candidates are {sorted(known)}")
    ids = (args.ids or sorted(known, key=lambda i: -known[i].score))[:MAX_CROPS]
    crops = [mask_crops(ctx.image, ctx.masks.get(i))[1] for i in ids]
    h, w = ctx.image.shape[:2]
    text = "; ".join(
        f"crop {n + 1}: #{i} {known[i].concept!r} score {known[i].score:.2f} area {100 * known[i].area / (h * w):.1f}%"
        for n, i in enumerate(ids)
    )
    return ToolResult(call=call, ids=ids, images=crops, text=text)
