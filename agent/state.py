"""The graph's typed state: small, JSON-safe values only.

Masks never enter the state (a checkpointer writes the state at every step): candidates carry
an id, and their pixels live in a ``MaskStore`` keyed by (thread, id). The image is referenced
by its path (or stored once in the mask store), never copied into the state.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from pydantic import BaseModel, Field


class PlannedCall(BaseModel):
    """A tool call a planner wants run (by the segment node, or answered inside inspect)."""

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    call_id: str | None = None  # the MLLM's tool-call id (native calls), echoed in the tool message
    label: str | None = None  # the concept the results count for (a synonym or box prompt of it)
    parents: list[int | None] | None = None  # for box refinements: the candidate each box came from


class Exchange(BaseModel):
    """One planner reply and what its tool calls returned (the MLLM's bounded memory)."""

    phase: str
    text: str = ""
    calls: list[PlannedCall] = Field(default_factory=list)
    native: bool = True
    results: list[str] = Field(default_factory=list)


class Decision(BaseModel):
    """What a planner decided at plan / inspect / refine."""

    calls: list[PlannedCall] = Field(default_factory=list)  # segment calls to run next
    finish: bool = False
    ids: list[int] = Field(default_factory=list)  # the selection, when finishing
    answer: str = ""  # the planner's own answer text, when finishing (may be empty)
    note: str = ""  # a short reason, shown in the trace
    memory: dict[str, Any] = Field(default_factory=dict)  # planner memory to merge into the state


class AgentState(TypedDict, total=False):
    # the conversation (kept across turns of a thread)
    turn: int
    question: str
    image_ref: str | None  # "store:<key>": the mask store holds the image by content hash (never a path)
    image_key: str
    image_size: list[int]  # [height, width]
    candidates: list[dict]  # tools.schemas.Candidate dumps, every candidate of the thread
    next_id: int
    previous: dict[str, Any]  # the last turn: question, ids, answer, concepts
    # this turn
    round: int
    max_rounds: int
    planner: str
    pending: list[dict]  # PlannedCall dumps
    presence: dict[str, float]  # prompt description -> presence score
    concepts_tried: list[str]
    exchanges: list[dict]  # Exchange dumps (bounded)
    decision: dict  # the last Decision dump
    memory: dict[str, Any]  # the planner's own small notes (JSON-safe)
    last_results: list[dict]  # what the last segment node's calls returned (text), for the MLLM's next message
    selection: list[int]
    answer: str
    answer_ms: float
    status: Literal["running", "done"]


MAX_EXCHANGES = 12


def turn_input(question: str, *, turn: int, max_rounds: int, planner: str, image_ref: str | None,
               image_key: str, image_size: list[int], previous: dict[str, Any] | None,
               keep_candidates: list[dict], next_id: int) -> AgentState:
    """The state a new turn starts from: the thread's candidates and last answer, nothing else."""
    return AgentState(
        turn=turn, question=question, image_ref=image_ref, image_key=image_key, image_size=image_size,
        candidates=keep_candidates, next_id=next_id, previous=previous or {}, round=0, max_rounds=max_rounds,
        planner=planner, pending=[], presence={}, concepts_tried=[], exchanges=[], decision={}, memory={},
        last_results=[], selection=[], answer="", answer_ms=0.0, status="running",
    )
