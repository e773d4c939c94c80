"""Segmentation tools: a concept phrase, or boxes / points (alone or with a concept)."""

from __future__ import annotations

import numpy as np

from segmenter.facade import Segmenter
from segmenter.types import Box, Point, Prompt, SegmentationResult
from tools.schemas import Candidate, SegmentConceptArgs, SegmentGeometryArgs, SegmentOutcome, ToolError

MAX_LISTED = 20  # candidates spelled out in the text summary; the rest are counted


def describe_candidates(candidates: list[Candidate], image_area: int) -> str:
    lines = [
        f"#{c.id} {c.concept!r} score {c.score:.2f} box {[round(v) for v in c.box]} "
        f"area {100 * c.area / image_area:.1f}%"
        for c in candidates[:MAX_LISTED]
    ]
    if len(candidates) > MAX_LISTED:
        lines.append(f"... and {len(candidates) - MAX_LISTED} more")
    return "; ".join(lines)


def _outcome(result: SegmentationResult, concept: str, next_id: int, round_: int,
             parents: list[int | None] | None = None) -> SegmentOutcome:
    h, w = result.image_size
    candidates, masks = [], {}
    for k, inst in enumerate(result.instances):
        cid = next_id + k
        candidates.append(
            Candidate(
                id=cid, concept=concept, score=round(inst.score, 4), box=[round(v, 1) for v in inst.box.as_list()],
                area=inst.area, prompt=result.prompt.describe(), round=round_,
                parent=parents[k] if parents and k < len(parents) else None,
            )
        )
        masks[cid] = inst.mask
    found = describe_candidates(candidates, h * w) if candidates else "nothing found"
    text = f"{result.prompt.describe()}: presence {result.presence:.2f}; {len(candidates)} candidate(s): {found}"
    return SegmentOutcome(prompt=result.prompt.describe(), concept=concept, presence=result.presence,
                          candidates=candidates, masks=masks, text=text)


def segment_concept(segmenter: Segmenter, args: SegmentConceptArgs, *, next_id: int = 1, round_: int = 0,
                    label: str | None = None) -> SegmentOutcome:
    """Every instance of ``args.concept`` on the segmenter's current image.

    ``label`` names the concept the candidates count for when the phrase is a synonym of it.
    """
    try:
        result = segmenter.segment(prompt=Prompt(concept=args.concept))
    except ValueError as exc:
        raise ToolError(str(exc)) from exc
    return _outcome(result, label or args.concept, next_id, round_)


def segment_geometry(segmenter: Segmenter, args: SegmentGeometryArgs, *, next_id: int = 1, round_: int = 0,
                     label: str | None = None, parents: list[int | None] | None = None) -> SegmentOutcome:
    """One mask per box (points refine each box), or one mask from points alone.

    Boxes partly outside the image are clipped; a box or point wholly outside is a ``ToolError``
    naming the image size, so a planner can correct itself.
    """
    h, w = segmenter.image.shape[:2]
    try:
        boxes = [Box.from_list(b) for b in args.boxes]  # the Segmenter clips them to the image
        points = [Point(x=p.x, y=p.y, positive=p.positive) for p in args.points]
        prompt = Prompt(concept=args.concept, boxes=boxes, points=points)
        result = segmenter.segment(prompt=prompt)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError too
        raise ToolError(f"{exc} (the image is {w}x{h} pixels)") from exc
    return _outcome(result, label or args.concept or "region", next_id, round_, parents)


def masks_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 0.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
