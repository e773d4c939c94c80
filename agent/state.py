"""The graph's state, typed: LangGraph parses it into ``AgentState`` once per node.

Nodes return their updates through ``update()``, which turns models into plain JSON values: the
checkpointer writes plain data only (no pickled classes), and a thread resumes in a new process.
Masks never enter the state: candidates carry an id, and their pixels live in a ``MaskStore``
keyed by (thread, id). The image is referenced by its content hash, never copied into the state.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_core import to_jsonable_python

from segmenter.study import Geometry
from tools.measure import Measurement
from tools.schemas import Candidate, ToolCall, ToolResult

Phase = Literal["plan", "inspect"]


class Decision(BaseModel):
    """What a planner decided at plan or inspect: tool calls to run, or finish with a selection."""

    calls: list[ToolCall] = Field(default_factory=list)  # for the tools node
    finish: bool = False
    ids: list[int] = Field(default_factory=list)  # the selection, when finishing
    answer: str = ""  # the planner's own answer text, when finishing (may be empty)
    note: str = ""  # a short reason, shown in the trace
    memory: BaseModel | None = Field(default=None, exclude=True)  # the planner's notes for its next step


class PreviousAnswer(BaseModel):
    """The last turn of the thread, for follow-up questions."""

    question: str
    ids: list[int] = Field(default_factory=list)
    answer: str = ""
    concepts: list[str] = Field(default_factory=list)
    turn: int = 0


class AgentState(BaseModel):
    # the conversation (kept across turns of a thread)
    turn: int = 1
    question: str = ""
    image_ref: str | None = None  # "store:<key>": the mask store holds the image by content hash (never a path)
    image_key: str = ""
    image_size: list[int] = Field(default_factory=list)  # [height, width]
    geometry: Geometry = Field(default_factory=Geometry)  # the image's spacing and modality (no other DICOM tag)
    candidates: list[Candidate] = Field(default_factory=list)  # every candidate of the thread
    next_id: int = 1
    previous: PreviousAnswer | None = None
    # this turn
    round: int = 0  # segment rounds run; after 1 + max_rounds of them inspect must finish
    max_rounds: int = 3
    planner: str = ""
    phase: Phase = "plan"  # the planner step whose calls are pending (the tools node returns to it)
    pending: list[ToolCall] = Field(default_factory=list)
    results: list[ToolResult] = Field(default_factory=list)  # what the last batch of calls returned
    presence: dict[str, float] = Field(default_factory=dict)  # prompt description -> presence score
    concepts_tried: list[str] = Field(default_factory=list)
    tried_calls: dict[str, ToolResult] = Field(default_factory=dict)  # segmentation calls run: repeats aren't rerun
    measurements: list[Measurement] = Field(default_factory=list)  # this turn's latest measure batch
    decision: Decision = Field(default_factory=Decision)  # the last one
    memory: dict[str, Any] = Field(default_factory=dict)  # the planner's notes (its own model, dumped)
    selection: list[int] = Field(default_factory=list)
    answer: str = ""
    answer_ms: float = 0.0
    status: Literal["running", "done"] = "running"

    def this_turn(self) -> list[Candidate]:
        return [c for c in self.candidates if c.turn == self.turn]

    def by_id(self, ids: list[int]) -> list[Candidate]:
        known = {c.id: c for c in self.candidates}
        return [known[i] for i in ids if i in known]


def update(**fields: Any) -> dict[str, Any]:
    """A node's state update as plain JSON values (models dumped), the only form the checkpoint holds."""
    return {name: to_jsonable_python(value) for name, value in fields.items()}


def turn_input(question: str, *, turn: int, max_rounds: int, planner: str, image_ref: str, image_key: str,
               image_size: list[int], previous: dict[str, Any] | None, keep_candidates: list[dict],
               next_id: int) -> dict[str, Any]:
    """The state a new turn starts from: the thread's candidates and last answer, nothing else."""
    state = AgentState.model_validate({
        "turn": turn, "question": question, "image_ref": image_ref, "image_key": image_key, "image_size": image_size,
        "candidates": keep_candidates, "next_id": next_id, "previous": previous or None, "max_rounds": max_rounds,
        "planner": planner,
    })
    return update(**dict(state))
