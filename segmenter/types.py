"""Typed values that cross module boundaries: prompts, instances, results.

Coordinates are in pixels of the original image, ``x`` to the right and ``y`` down;
boxes are ``[x0, y0, x1, y1]`` with inclusive-exclusive semantics irrelevant at this scale
(masks are the ground truth; boxes are for display and prompting).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from segmenter.catalog import Refine

# Caps on one prompt, shared by the Python API and the HTTP service (whose wire models reuse these
# classes): generous for any clinical question, small enough that no request can be huge.
MAX_BOXES = 64
MAX_POINTS = 64
MAX_CONCEPT_CHARS = 200
MAX_PROMPTS = 64  # prompts in one service request


class Box(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)  # NaN/inf would become a meaningless box

    x0: float
    y0: float
    x1: float
    y1: float

    @model_validator(mode="after")
    def _ordered(self) -> Box:
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise ValueError(f"box must have x1 > x0 and y1 > y0, got {self.as_list()}")
        return self

    @classmethod
    def from_list(cls, values: list[float] | tuple[float, ...]) -> Box:
        if len(values) != 4:
            raise ValueError(f"a box needs 4 numbers [x0, y0, x1, y1], got {len(values)}")
        return cls(x0=values[0], y0=values[1], x1=values[2], y1=values[3])

    def as_list(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]

    def clipped(self, width: int, height: int) -> Box:
        """The part of the box inside the image; raises if nothing is left."""
        x0, x1 = max(0.0, self.x0), min(float(width), self.x1)
        y0, y1 = max(0.0, self.y0), min(float(height), self.y1)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {self.as_list()} lies outside the {width}x{height} image")
        return Box(x0=x0, y0=y0, x1=x1, y1=y1)


class Point(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    x: float
    y: float
    positive: bool = True  # False marks background


class Prompt(BaseModel):
    """What to segment: a concept phrase, boxes, points, or a concept plus a box."""

    concept: str | None = Field(None, max_length=MAX_CONCEPT_CHARS)
    boxes: list[Box] = Field(default_factory=list, max_length=MAX_BOXES)
    points: list[Point] = Field(default_factory=list, max_length=MAX_POINTS)
    # the image's modality where known (a DICOM's Modality tag: "CT", "MR"); a backend may pick the weights that
    # know it (MedSAM3-Lite: a catalog concept's ``modality_experts``). The Segmenter fills it from the geometry.
    modality: str | None = Field(None, max_length=16)  # a DICOM code string: at most 16 characters

    @field_validator("modality")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value.strip().upper() or None if value else None

    @field_validator("concept")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise ValueError("concept phrase is empty")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from JSON "\ud800": no text model can take it
            raise ValueError("concept phrase is not valid Unicode text") from None
        return value

    @model_validator(mode="after")
    def _something(self) -> Prompt:
        if self.concept is None and not self.boxes and not self.points:
            raise ValueError("a prompt needs a concept, a box or a point")
        return self

    def describe(self) -> str:
        parts = []
        if self.concept:
            parts.append(repr(self.concept))
        if self.boxes:
            parts.append(f"{len(self.boxes)} box(es)")
        if self.points:
            parts.append(f"{len(self.points)} point(s)")
        return " + ".join(parts)


class Instance(BaseModel):
    """One object: a binary mask at the image's size, a confidence and its bounding box."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    mask: Annotated[np.ndarray, Field(repr=False)]  # bool (H, W)
    score: float
    box: Box
    area: int

    @classmethod
    def from_mask(cls, mask: np.ndarray, score: float) -> Instance:
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            raise ValueError("an instance mask must not be empty")
        box = Box(x0=float(xs.min()), y0=float(ys.min()), x1=float(xs.max() + 1), y1=float(ys.max() + 1))
        return cls(mask=mask.astype(bool), score=float(score), box=box, area=len(xs))


class SegmentationResult(BaseModel):
    """A backend's answer to one prompt on one image."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    prompt: Prompt
    instances: list[Instance]
    presence: float  # probability that the concept is in the image (1.0 for geometric prompts)
    image_size: tuple[int, int]  # (height, width)
    backend: str
    timings_ms: dict[str, float] = Field(default_factory=dict)
    laterality: str | None = None  # "left X"/"right X": the convention that told the sides (segmenter.laterality)
    # how the backend redrew the masks after its model drew them (MedSAM3-Lite's refine stage, segmenter/lite/
    # refine.py): "box", each mask already redrawn by a box decoder from its own (slightly expanded) box, so a
    # box-prompt round on it would draw it again; "union" / "intersection", that drawing combined with the
    # model's; "none": as the model drew them (SAM 3, geometric prompts, concept + box prompts)
    refine: Refine = "none"

    @property
    def union_mask(self) -> np.ndarray:
        mask = np.zeros(self.image_size, dtype=bool)
        for inst in self.instances:
            mask |= inst.mask
        return mask

    @property
    def found(self) -> bool:
        return bool(self.instances)

    def summary(self) -> dict:
        """JSON-ready description without the masks."""
        return {
            "prompt": self.prompt.model_dump(exclude_defaults=True),
            "presence": round(self.presence, 4),
            "image_size": list(self.image_size),
            "backend": self.backend,
            "instances": [
                {"score": round(i.score, 4), "box": [round(v, 1) for v in i.box.as_list()], "area": i.area}
                for i in self.instances
            ],
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
            **({"laterality": self.laterality} if self.laterality else {}),
            **({"refine": self.refine} if self.refine != "none" else {}),
        }
