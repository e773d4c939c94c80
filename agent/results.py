"""What a run returns: masks per concept, the answer, the step trace and overlays; ``save`` writes them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from agent.volume_output import VolumeOutput, save_study_masks
from segmenter.study import Study
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
    # a 2D run on a one-slice DICOM or NIfTI: its geometry and (DICOM) headers, for the NIfTI and SEG exports
    source: Annotated[Study | None, Field(repr=False, exclude=True)] = None

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
                    "nifti": paths.get(("nifti", m.concept)),
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
            # DICOM/NIfTI input: a NIfTI per concept tried (empty where nothing was kept), a SEG for DICOM
            "nifti": [{"concept": key[1], "path": path} for key, path in paths.items()
                      if isinstance(key, tuple) and key[0] == "nifti"],
            "seg": paths.get("seg"),
            "seg_skipped": paths.get("seg_skipped"),  # DICOM input whose headers a SEG cannot reference: why
            "volume": None if self.volume is None else self.volume.summary(),
            "trace": [event.summary() for event in self.trace],
        }

    def save(self, out_dir: str | Path) -> Path:
        """Write overlay.png, masks/<concept>.png (union) and masks/<concept>_<k>.png (instances, 0/255 at
        the image's size) and result.json (paths relative to ``out_dir``); return ``out_dir``. For DICOM or
        NIfTI input (a volume, or a one-slice ``source``) also masks/<concept>_3d.nii.gz per concept (the
        source affine) and, for DICOM, segmentation.dcm (a DICOM SEG of all concepts). A failed run (status
        "error") writes result.json only: its error and trace."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.masks:
            (out / "masks").mkdir(exist_ok=True)
        paths: dict[Any, str] = {}
        if self.status == "done":  # a failed run has no answer to draw
            paths["overlay"] = "overlay.png"
            Image.fromarray(self.overlay).save(out / "overlay.png")
        names = _unique_slugs(self._file_concepts())
        for i, concept_mask in enumerate(self.masks):
            paths[("union", i)] = f"masks/{names[i]}.png"
            _save_mask(concept_mask.mask, out / paths[("union", i)])
            for j, inst in enumerate(concept_mask.instances):
                paths[("instance", i, j)] = f"masks/{names[i]}_{j + 1}.png"
                _save_mask(inst.mask, out / paths[("instance", i, j)])
        if self.status == "done":
            paths.update(self._save_study_masks(out, names))
        (out / "result.json").write_text(json.dumps(self.to_json(paths), indent=2) + "\n", encoding="utf-8")
        return out

    def _save_study_masks(self, out: Path, names: list[str]) -> dict[Any, str]:
        """A DICOM or NIfTI input's NIfTI per concept (and SEG), keyed as ``to_json`` reads them; ``names``
        are the file names of ``_file_concepts``."""
        name_of: dict[str, str] = {}
        for concept, name in zip(self._file_concepts(), names, strict=True):
            name_of.setdefault(concept, name)  # a concept's first name (hand-made results may repeat one)
        if self.volume is not None:  # every concept segmented over the volume, found or not
            files = self.volume.save(out, lambda concept: name_of.get(concept, slug(concept)))
        elif self.source is not None and self.source.kind != "image":  # one slice: every concept tried
            unions = {c: np.zeros((1, *self.image_size), dtype=bool) for c in name_of}
            for m in self.masks:
                unions[m.concept] |= m.mask[None]
            files = save_study_masks(out, self.source, unions, name_of)
        else:
            return {}
        paths: dict[Any, str] = {("nifti", concept): path for concept, path in files.nifti.items()}
        if files.seg is not None:
            paths["seg"] = files.seg
        if files.seg_skipped is not None:
            paths["seg_skipped"] = files.seg_skipped
        return paths

    def _file_concepts(self) -> list[str]:
        """The concept of each of ``masks``, then each other concept tried: in the order files are named."""
        kept = [m.concept for m in self.masks]
        return kept + [c for c in dict.fromkeys(self.concepts_tried) if c not in kept]


def _unique_slugs(concepts: list[str]) -> list[str]:
    """File names per concept, in order; a concept whose slug is taken gets "_" appended."""
    used: list[str] = []
    for concept in concepts:
        name = slug(concept)
        while name in used:  # two concepts with the same slug
            name += "_"
        used.append(name)
    return used


StepEvent.model_rebuild()  # its ``result`` refers to AgentResult, defined after it
