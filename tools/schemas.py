"""Typed inputs and outputs of the planner's tools (what an MLLM's tool-call arguments must parse into)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator


class ToolError(ValueError):
    """A tool call that cannot be carried out; the message is sent back to the planner."""


class SegmentConceptArgs(BaseModel):
    concept: str = Field(min_length=1, max_length=200, description="a short noun phrase, e.g. 'polyp'")

    @field_validator("concept")
    @classmethod
    def _strip(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("concept phrase is empty")
        return value


class PointArg(BaseModel):
    x: float
    y: float
    positive: bool = True


class SegmentGeometryArgs(BaseModel):
    boxes: list[list[float]] = Field(default_factory=list, description="boxes [x0, y0, x1, y1] in image pixels")
    points: list[PointArg] = Field(default_factory=list, description="points in image pixels")
    concept: str | None = Field(None, max_length=200, description="optional phrase naming what the boxes hold")

    @field_validator("boxes")
    @classmethod
    def _four(cls, boxes: list[list[float]]) -> list[list[float]]:
        for box in boxes:
            if len(box) != 4:
                raise ValueError(f"a box needs 4 numbers [x0, y0, x1, y1], got {box}")
            if box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(f"box {box} must have x1 > x0 and y1 > y0")
        return boxes

    @model_validator(mode="after")
    def _something(self) -> SegmentGeometryArgs:
        if not self.boxes and not self.points:
            raise ValueError("segment_geometry needs at least one box or point")
        if len(self.boxes) > 32:
            raise ValueError(f"at most 32 boxes per call, got {len(self.boxes)}")
        return self


class ExamineMasksArgs(BaseModel):
    ids: list[int] = Field(default_factory=list, validation_alias=AliasChoices("ids", "mask_ids"),
                           description="candidate mask ids to show; empty = all current candidates")


class SelectMasksArgs(BaseModel):
    ids: list[int] = Field(min_length=1, validation_alias=AliasChoices("ids", "mask_ids"),
                           description="ids of the candidate masks that answer the question")
    answer: str = Field("", max_length=2000, description="a short answer to the user's question")


class ReportNoMaskArgs(BaseModel):
    answer: str = Field("", max_length=2000, description="a short answer saying nothing was found, and why")


class Candidate(BaseModel):
    """One candidate mask, without its pixels (those live in a mask store, keyed by ``id``)."""

    id: int
    concept: str
    score: float
    box: list[float]
    area: int
    prompt: str  # the prompt that produced it, e.g. "'polyp' + 1 box(es)"
    round: int = 0  # the segment round of its turn (1 = the first)
    turn: int = 0  # the conversation turn that made it
    parent: int | None = None  # the candidate a box-refinement started from


class SegmentOutcome(BaseModel):
    """What a segmentation tool returns: candidates, their masks, and a text summary for the planner."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    prompt: str
    concept: str
    presence: float
    candidates: list[Candidate]
    masks: Annotated[dict[int, np.ndarray], Field(repr=False)]
    text: str


class ExamineOutcome(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    ids: list[int]
    images: Annotated[list[np.ndarray], Field(repr=False)]  # one zoomed crop per id
    text: str


class Selection(BaseModel):
    """The final choice: candidate ids that answer the question (empty = nothing found) and the answer text."""

    ids: list[int] = Field(default_factory=list)
    answer: str = ""
