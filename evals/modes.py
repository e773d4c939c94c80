"""The three ways a case is answered, each returning a predicted mask at the image's size.

- ``direct``: the case's known concept(s) -> ``Segmenter``, text only (union over concepts).
- ``box``: the concept plus the ground-truth box(es) -> ``Segmenter``, like the MedSAM3 paper's
  T+I setting. ``component`` strategy (default): one box per connected component of the target
  (8-connectivity), so each polyp / nucleus / lung gets its own box; ``union``: one box around the
  whole target. With exactly one concept the text goes with the boxes; with several (a reasoning
  question over e.g. left + right lung), or with ``text=False`` (``--box-prompt box``), the boxes
  go alone. Cases with an empty target have no box and are not run in this mode.
- ``agent``: the question -> ``agent.Agent`` (any planner); concept cases without a question
  are asked ``"Segment the <concept> in this image."``.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from evals.cases import EvalCase
from segmenter.facade import Segmenter
from segmenter.study import DICOM_MODALITIES, Geometry
from segmenter.types import Box

if TYPE_CHECKING:
    from agent.core import Agent

Mode = Literal["direct", "box", "agent"]
MODES: tuple[str, ...] = ("direct", "box", "agent")
BoxStrategy = Literal["component", "union"]
BOX_CHUNK = 32  # boxes per segment() call: bounds memory on images with hundreds of nuclei


class EncodeMeter:
    """Encoder milliseconds of the calls made while it is current (``with meter:``), in this thread and
    in threads that copy its context (LangGraph's): concurrent cases each count their own encodes."""

    def __init__(self) -> None:
        self.ms = 0.0
        self._token: Any = None

    def __enter__(self) -> EncodeMeter:
        self._token = _METER.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _METER.reset(self._token)


_METER: ContextVar[EncodeMeter | None] = ContextVar("evals_encode_meter", default=None)


class MeteredSegmenter(Segmenter):
    """A ``Segmenter`` that adds up the encoder time its results report.

    The runner uses it to separate the once-per-image encode from per-prompt work, also for
    calls the agent makes through it (its handles call this ``segment``). ``encode_ms`` is the
    total; the current ``EncodeMeter`` gets each call's share too.
    """

    encode_ms: float = 0.0

    def segment(self, *args: Any, **kwargs: Any):
        result = super().segment(*args, **kwargs)
        encode = float(result.timings_ms.get("encode", 0.0))
        self.encode_ms += encode
        meter = _METER.get()
        if meter is not None:
            meter.ms += encode
        return result


def question_for(case: EvalCase) -> str:
    if case.question is not None:
        return case.question
    return f"Segment the {' and '.join(case.concepts)} in this image."


def target_boxes(mask: np.ndarray, strategy: BoxStrategy = "component") -> list[Box]:
    """Boxes of a binary target: one per 8-connected component, or one around all of it."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return []
    if strategy == "union":
        return [Box(x0=float(xs.min()), y0=float(ys.min()), x1=float(xs.max() + 1), y1=float(ys.max() + 1))]
    import cv2

    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    boxes = []
    for label in range(1, count):
        x, y, w, h = (int(v) for v in stats[label, :4])
        boxes.append(Box(x0=float(x), y0=float(y), x1=float(x + w), y1=float(y + h)))
    return boxes


def case_geometry(case: EvalCase) -> Geometry | None:
    """What a DICOM of the case's image would say of its modality (a manifest row's ``modality``: "ct" -> CT), so
    a 2D slice of a CT set is segmented as a CT study's slice would be; None where no tag would say it."""
    name = str(case.metadata.get("modality", "")).lower()
    tag = next((tag for tag, named in DICOM_MODALITIES.items() if named == name), None)
    return Geometry(modality=tag) if tag else None


def predict_direct(seg: Segmenter, image: np.ndarray, case: EvalCase) -> tuple[np.ndarray, dict[str, Any]]:
    if not case.concepts:
        raise ValueError(f"case {case.key} names no concept, so it cannot run in direct mode")
    seg.set_image(image, case_geometry(case))  # a cache hit after the first call on this image
    mask = np.zeros(image.shape[:2], dtype=bool)
    presence, instances = 0.0, 0
    for concept in case.concepts:
        result = seg.segment(concept=concept)
        mask |= result.union_mask
        presence = max(presence, result.presence)
        instances += len(result.instances)
    return mask, {"presence": round(presence, 4), "n_instances": instances}


def predict_box(
    seg: Segmenter,
    image: np.ndarray,
    case: EvalCase,
    target: np.ndarray,
    strategy: BoxStrategy = "component",
    *,
    text: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    boxes = target_boxes(target, strategy)
    if not boxes:
        raise ValueError(f"case {case.key} has an empty target, so there is no box to prompt with")
    concept = case.concepts[0] if text and len(case.concepts) == 1 else None
    seg.set_image(image, case_geometry(case))
    mask = np.zeros(image.shape[:2], dtype=bool)
    presence, instances = 0.0, 0
    for start in range(0, len(boxes), BOX_CHUNK):
        result = seg.segment(concept=concept, boxes=boxes[start : start + BOX_CHUNK])
        mask |= result.union_mask
        presence = max(presence, result.presence)
        instances += len(result.instances)
    return mask, {"presence": round(presence, 4), "n_instances": instances, "n_boxes": len(boxes)}


def predict_agent(agent: Agent, image: np.ndarray, case: EvalCase) -> tuple[np.ndarray, dict[str, Any]]:
    """Ask the agent the case's question; its result's union mask is the prediction."""
    question = question_for(case)
    start = time.perf_counter()
    result = agent.run(question, image=image)
    mask = np.asarray(result.union_mask(), dtype=bool)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"agent returned a {mask.shape} mask for a {image.shape[:2]} image")
    return mask, {
        "question": question,
        "answer": result.answer[:500],
        "planner": result.planner,
        "concepts_tried": result.concepts_tried,
        "n_instances": sum(len(m.instances) for m in result.masks),
        "agent_seconds": round(time.perf_counter() - start, 3),
    }
