"""What a run returns: masks per concept, the answer, the step trace and overlays; ``save`` writes them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from agent.volume_output import VolumeOutput
from segmenter.types import Instance
from tools.measure import Measurement

EventKind = Literal["plan", "tool_call", "tool_result", "overlay", "verdict", "answer", "error"]


class StepEvent(BaseModel):
    """One thing that happened in a run, in order; UIs render them as they stream."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    kind: EventKind
    text: str = ""
    image: Annotated[np.ndarray | None, Field(repr=False)] = None  # RGB uint8 (overlays, crops)
    data: dict[str, Any] = Field(default_factory=dict)
    node: str = ""
    ms: float = 0.0
    result: Annotated[AgentResult | None, Field(exclude=True, repr=False)] = None  # on the last event ("answer")

    def summary(self) -> dict[str, Any]:
        """JSON-ready, without the image or non-JSON data."""
        data = {k: v for k, v in self.data.items() if _jsonable(v)}
        return {"kind": self.kind, "node": self.node, "text": self.text, "ms": round(self.ms, 1), "data": data,
                "has_image": self.image is not None}


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


class ConceptMask(BaseModel):
    """The instances found for one concept, and their union."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    concept: str
    instances: list[Instance]
    image_size: tuple[int, int]  # (height, width)

    @property
    def mask(self) -> np.ndarray:
        union = np.zeros(self.image_size, dtype=bool)
        for inst in self.instances:
            union |= inst.mask
        return union


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "mask"


def _save_mask(mask: np.ndarray, path: Path) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path)


class AgentResult(BaseModel):
    """A run's outcome. ``status`` "error": the run failed (``error`` says why) and this is what it had
    computed before: the trace, no masks, no answer (``AgentError.partial``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    question: str
    answer: str
    planner: str
    concepts_tried: list[str]
    masks: list[ConceptMask]
    image_size: tuple[int, int]
    overlay: Annotated[np.ndarray, Field(repr=False)]
    trace: list[StepEvent] = Field(default_factory=list)
    thread_id: str | None = None
    rounds: int = 0
    status: Literal["done", "error"] = "done"
    error: str | None = None
    measurements: list[Measurement] = Field(default_factory=list)  # sizes, counts, ratios of the chosen masks
    # a volume run: the 3D masks per concept (``masks`` then hold the key slice's cross-sections)
    volume: Annotated[VolumeOutput | None, Field(repr=False, exclude=True)] = None

    def union_mask(self) -> np.ndarray:
        union = np.zeros(self.image_size, dtype=bool)
        for concept_mask in self.masks:
            union |= concept_mask.mask
        return union

    @property
    def found(self) -> bool:
        return any(m.instances for m in self.masks)

    def to_json(self, paths: dict[Any, str] | None = None) -> dict[str, Any]:
        paths = paths or {}
        return {
            "status": self.status,
            "error": self.error,
            "question": self.question,
            "answer": self.answer,
            "planner": self.planner,
            "concepts_tried": self.concepts_tried,
            "image_size": list(self.image_size),
            "thread_id": self.thread_id,
            "rounds": self.rounds,
            "overlay": paths.get("overlay"),
            "masks": [
                {
                    "concept": m.concept,
                    "path": paths.get(("union", i)),
                    "area": int(m.mask.sum()),
                    "instances": [
                        {"path": paths.get(("instance", i, j)), "score": round(inst.score, 4),
                         "box": [round(v, 1) for v in inst.box.as_list()], "area": inst.area}
                        for j, inst in enumerate(m.instances)
                    ],
                }
                for i, m in enumerate(self.masks)
            ],
            "measurements": [{**m.model_dump(), "text": m.text} for m in self.measurements],
            "volume": None if self.volume is None else self.volume.summary(),
            "trace": [event.summary() for event in self.trace],
        }

    def save(self, out_dir: str | Path) -> Path:
        """Write overlay.png, masks/<concept>.png (union) and masks/<concept>_<k>.png (instances, 0/255 at
        the image's size) and result.json (paths relative to ``out_dir``); return ``out_dir``. A failed run
        (status "error") writes result.json only: its error and trace."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.masks:
            (out / "masks").mkdir(exist_ok=True)
        paths: dict[Any, str] = {}
        if self.status == "done":  # a failed run has no answer to draw
            paths["overlay"] = "overlay.png"
            Image.fromarray(self.overlay).save(out / "overlay.png")
        used: set[str] = set()
        for i, concept_mask in enumerate(self.masks):
            name = slug(concept_mask.concept)
            while name in used:  # two concepts with the same slug
                name += "_"
            used.add(name)
            paths[("union", i)] = f"masks/{name}.png"
            _save_mask(concept_mask.mask, out / paths[("union", i)])
            for j, inst in enumerate(concept_mask.instances):
                paths[("instance", i, j)] = f"masks/{name}_{j + 1}.png"
                _save_mask(inst.mask, out / paths[("instance", i, j)])
        if self.volume is not None and self.status == "done":  # NIfTI per concept (+ DICOM SEG for DICOM input)
            self.volume.save(out, lambda concept: slug(concept) + "_3d")
        (out / "result.json").write_text(json.dumps(self.to_json(paths), indent=2) + "\n")
        return out


StepEvent.model_rebuild()  # its ``result`` refers to AgentResult, defined after it
