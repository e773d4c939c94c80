"""Segmentation tools: a concept phrase, or boxes / points (alone or with a concept).

New candidates are numbered from ``ctx.next_id`` and their masks go to the thread's mask store;
the result carries the candidates (ids, scores, boxes) and a text summary for the planner.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from segmenter.types import Box, Point, Prompt, SegmentationResult
from tools.context import ToolContext
from tools.schemas import Candidate, SegmentConceptArgs, SegmentGeometryArgs, ToolCall, ToolError, ToolResult

MAX_LISTED = 20  # candidates spelled out in the text summary; the rest are counted


def describe_candidates(candidates: list[Candidate], image_area: int,
                        box: Callable[[list[float]], list[float]] | None = None) -> str:
    """One line per candidate; ``box`` maps its box (original pixels) to the reader's frame."""
    lines = [
        f"#{c.id} {c.concept!r} score {c.score:.2f} box {[round(v) for v in (box(c.box) if box else c.box)]} "
        f"area {100 * c.area / image_area:.1f}%"
        for c in candidates[:MAX_LISTED]
    ]
    if len(candidates) > MAX_LISTED:
        lines.append(f"... and {len(candidates) - MAX_LISTED} more")
    return "; ".join(lines)


def found_text(prompt: str, presence: float, candidates: list[Candidate], image_area: int,
               box: Callable[[list[float]], list[float]] | None = None) -> str:
    """A segmentation call's summary: its prompt, presence and candidates (boxes mapped by ``box``)."""
    listed = describe_candidates(candidates, image_area, box=box) if candidates else "nothing found"
    return f"{prompt}: presence {presence:.2f}; {len(candidates)} candidate(s): {listed}"


def _found(result: SegmentationResult, concept: str, phrase: str | None, call: ToolCall,
           ctx: ToolContext) -> ToolResult:
    """The segmenter's instances as numbered candidates (masks into the store); a probe keeps nothing."""
    prompt = result.prompt.describe()
    if call.probe:
        return ToolResult(call=call, prompt=prompt, phrase=phrase, concept=concept, presence=result.presence,
                          text=f"{prompt}: presence {result.presence:.2f} (a presence probe; nothing kept)")
    h, w = result.image_size
    candidates, masks = [], {}
    for k, inst in enumerate(result.instances):
        cid = ctx.next_id + k
        candidates.append(
            Candidate(
                id=cid, concept=concept, score=round(inst.score, 4), box=[round(v, 1) for v in inst.box.as_list()],
                area=inst.area, prompt=prompt, round=ctx.round, turn=ctx.turn,
                parent=call.parents[k] if call.parents and k < len(call.parents) else None, refine=result.refine,
            )
        )
        masks[cid] = inst.mask
    ctx.masks.put(masks)
    text = found_text(prompt, result.presence, candidates, h * w) + (f" (sides: {result.laterality})"
                                                                      if result.laterality else "")
    return ToolResult(call=call, prompt=prompt, phrase=phrase, concept=concept, presence=result.presence,
                      candidates=candidates, text=text)


def segment_concept(args: SegmentConceptArgs, ctx: ToolContext, call: ToolCall) -> ToolResult:
    """Every instance of ``args.concept`` on the image (credited to ``call.credited_concept`` when the
    phrase is a synonym of it)."""
    try:
        result = ctx.segmenter.segment(prompt=Prompt(concept=args.concept))
    except ValueError as exc:
        raise ToolError(str(exc)) from exc
    return _found(result, call.credited_concept or args.concept, args.concept, call, ctx)


def segment_geometry(args: SegmentGeometryArgs, ctx: ToolContext, call: ToolCall) -> ToolResult:
    """One mask per box (points refine each box), or one mask from points alone.

    Boxes partly outside the image are clipped; a box or point wholly outside is a ``ToolError``
    naming the image size, so a planner can correct itself.
    """
    h, w = ctx.image.shape[:2]
    try:
        boxes = [Box.from_list(b) for b in args.boxes]  # the Segmenter clips them to the image
        points = [Point(x=p.x, y=p.y, positive=p.positive) for p in args.points]
        result = ctx.segmenter.segment(prompt=Prompt(concept=args.concept, boxes=boxes, points=points))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError too
        raise ToolError(f"{exc} (the image is {w}x{h} pixels)") from exc
    return _found(result, call.credited_concept or args.concept or "region", args.concept, call, ctx)


def masks_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 0.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
