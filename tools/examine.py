"""Examine candidate masks: a numbered overlay of all of them, and a zoomed crop per mask."""

from __future__ import annotations

import numpy as np

from segmenter.overlay import render_overlay, zoom_crop
from tools.context import ToolContext
from tools.schemas import Candidate, ExamineMasksArgs, ToolCall, ToolError, ToolResult

MAX_CROPS = 8  # crops per call: each is an image an MLLM must read


def candidates_overlay(image: np.ndarray, candidates: list[Candidate], masks: dict[int, np.ndarray]) -> np.ndarray:
    """The image with each candidate tinted and labelled by its id (what a planner refers to)."""
    return render_overlay(image, [masks[c.id] for c in candidates], [str(c.id) for c in candidates])


def examine_masks(args: ExamineMasksArgs, ctx: ToolContext, call: ToolCall) -> ToolResult:
    """A zoomed crop of each asked candidate among those shown (all of them, best first, by default)."""
    known = {c.id: c for c in ctx.shown}
    if not known:
        raise ToolError("there are no candidate masks to examine yet; segment something first")
    unknown = [i for i in args.ids if i not in known]
    if unknown:
        raise ToolError(f"unknown mask id(s) {unknown}; current candidates are {sorted(known)}")
    ids = (args.ids or sorted(known, key=lambda i: -known[i].score))[:MAX_CROPS]
    crops = [zoom_crop(ctx.image, ctx.masks.get(i), label=str(i)) for i in ids]
    h, w = ctx.image.shape[:2]
    text = "; ".join(
        f"crop {n + 1}: #{i} {known[i].concept!r} score {known[i].score:.2f} area {100 * known[i].area / (h * w):.1f}%"
        for n, i in enumerate(ids)
    )
    return ToolResult(call=call, ids=ids, images=crops, text=text)
