"""Typed inputs and outputs of the planner's tools: the arguments a call must parse into, the call itself
(``ToolCall``) and what running it returned (``ToolResult``)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from segmenter.catalog import Refine
from tools.measure import Measurement, MeasureWhat

ToolKind = Literal["segment", "examine", "finish"]


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
    # "stated": an MLLM reads its frame in the system prompt; the planner maps it back to original pixels
    boxes: list[list[float]] = Field(default_factory=list,
                                     description="boxes [x0, y0, x1, y1] in the image coordinates stated")
    points: list[PointArg] = Field(default_factory=list, description="points in the image coordinates stated")
    concept: str | None = Field(None, max_length=200, description="optional phrase naming what the boxes hold")

    @field_validator("boxes")
    @classmethod
    def _boxes_are_ordered_quads(cls, boxes: list[list[float]]) -> list[list[float]]:
        for box in boxes:
            if len(box) != 4:
                raise ValueError(f"a box needs 4 numbers [x0, y0, x1, y1], got {box}")
            if box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(f"box {box} must have x1 > x0 and y1 > y0")
        return boxes

    @model_validator(mode="after")
    def _needs_a_box_or_point(self) -> SegmentGeometryArgs:
        if not self.boxes and not self.points:
            raise ValueError("segment_geometry needs at least one box or point")
        if len(self.boxes) > 32:
            raise ValueError(f"at most 32 boxes per call, got {len(self.boxes)}")
        return self


class ExamineMasksArgs(BaseModel):
    ids: list[int] = Field(default_factory=list, validation_alias=AliasChoices("ids", "mask_ids"),
                           description="candidate mask ids to show; empty = all current candidates")


class MeasureArgs(BaseModel):
    ids: list[int] = Field(min_length=1, max_length=64, validation_alias=AliasChoices("ids", "mask_ids"),
                           description="ids of the candidate masks to measure (all masks a ratio needs)")
    what: MeasureWhat | None = Field(None, description="one measurement only: area, diameter, volume, count, "
                                                       "cdr (cup-to-disc ratio) or ctr (cardiothoracic ratio); "
                                                       "omitted = every one that applies")


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
    refine: Refine = "none"  # how the segmenter redrew its mask (SegmentationResult.refine); "box": already
    # redrawn from its own box, so a box-prompt round would draw it again


class Selection(BaseModel):
    """The final choice: candidate ids that answer the question (empty = nothing found) and the answer text."""

    ids: list[int] = Field(default_factory=list)
    answer: str = ""


class ToolCall(BaseModel):
    """A call a planner wants run: a tool's name and its raw arguments (``run_tool`` validates them)."""

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    call_id: str | None = None  # the MLLM's tool-call id (native calls), echoed in its tool message
    credited_concept: str | None = None  # the concept the candidates count for (the call may use a synonym or box)
    parents: list[int | None] | None = None  # box refinements: the candidate each box came from
    probe: bool = False  # presence only, nothing kept: the offline planner asking how present a concept is
    problem: str | None = None  # why the planner could not read the call (bad JSON): not run, answered as invalid


ResultStatus = Literal["ok", "invalid", "failed", "not_run"]


class ToolResult(BaseModel):
    """What one call returned. ``status``: ok; invalid (unreadable or schema-violating arguments, an unknown
    tool); failed (valid, but the tool could not carry it out: an unknown mask id, a box outside the image);
    not_run (skipped by the batch rule, ``error`` says why). ``text`` is the tool's own summary."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    call: ToolCall
    kind: ToolKind | None = None  # None when the call could not be validated
    status: ResultStatus = "ok"
    text: str = ""
    error: str | None = None
    ms: float = 0.0
    # segment_concept / segment_geometry (candidates' masks are in the mask store, keyed by id)
    prompt: str | None = None  # the prompt as the segmenter saw it, e.g. "'polyp' + 1 box(es)"
    phrase: str | None = None  # the concept phrase given to the segmenter (None: boxes or points alone)
    concept: str | None = None  # the concept the candidates count for
    presence: float | None = None
    candidates: list[Candidate] = Field(default_factory=list)
    # examine_masks, measure: the ids looked at; the crops travel with the result but never into a checkpoint
    ids: list[int] = Field(default_factory=list)
    images: list[np.ndarray] = Field(default_factory=list, exclude=True, repr=False)
    # measure: sizes, counts and ratios of the ``ids`` it measured
    measurements: list[Measurement] = Field(default_factory=list)
    # select_masks / report_no_mask
    selection: Selection | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"
