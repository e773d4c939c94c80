"""The interface every planner implements, and the view of a run it works on."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from langgraph.types import StreamWriter
from pydantic import BaseModel

from agent.errors import PlannerError  # noqa: F401  (re-exported)
from agent.results import EventKind, StepEvent
from agent.state import AgentState, Decision, PreviousAnswer
from agent.store import MaskStore
from segmenter.facade import Segmenter
from segmenter.study import Geometry
from tools.examine import candidates_overlay
from tools.schemas import Candidate, ToolResult

M = TypeVar("M", bound=BaseModel)


class ThreadMasks:
    """One thread's candidate masks: written to the mask store, read back from it (each decoded once a run)."""

    def __init__(self, store: MaskStore, thread_id: str) -> None:
        self.store = store
        self.thread_id = thread_id
        self._read: dict[int, np.ndarray] = {}

    def get(self, mask_id: int) -> np.ndarray:
        if mask_id not in self._read:
            self._read[mask_id] = self.store.get_mask(self.thread_id, mask_id)
        return self._read[mask_id]

    def put(self, masks: dict[int, np.ndarray]) -> None:
        self.store.put_masks(self.thread_id, masks)


@dataclass
class RunContext:
    """Per-run objects the graph's nodes need but the checkpointed state must not hold."""

    segmenter: Segmenter  # this run's handle, set to the run's image
    image: np.ndarray
    planner: Planner
    masks: ThreadMasks
    geometry: Geometry = field(default_factory=Geometry)  # the image's spacing and modality (unknown for a photo)
    batch_images: list[np.ndarray] = field(default_factory=list)  # the last batch's crops (pixels stay out of state)


@dataclass
class PlannerView:
    """What a planner sees at a step: the typed state (read-only), the run's image, masks and segmenter."""

    state: AgentState
    ctx: RunContext
    node: str = ""
    write: StreamWriter = field(default=lambda event: None)  # the graph's custom stream

    @property
    def question(self) -> str:
        return self.state.question

    @property
    def image(self) -> np.ndarray:
        return self.ctx.image

    @property
    def image_area(self) -> int:
        h, w = self.image.shape[:2]
        return h * w

    @property
    def turn(self) -> int:
        return self.state.turn

    @property
    def round(self) -> int:
        return self.state.round

    @property
    def previous(self) -> PreviousAnswer | None:
        return self.state.previous

    @property
    def results(self) -> list[ToolResult]:
        """What the calls of the last batch returned (in call order)."""
        return self.state.results

    def memory(self, model: type[M]) -> M:
        """The planner's notes from its previous step, as its own model (empty at a turn's start)."""
        return model.model_validate(self.state.memory)

    def candidates(self) -> list[Candidate]:
        """This turn's candidates."""
        return self.state.this_turn()

    def by_id(self, ids: list[int]) -> list[Candidate]:
        return self.state.by_id(ids)

    def previous_candidates(self) -> list[Candidate]:
        """The previous answer's masks (empty on a thread's first turn)."""
        return self.by_id(self.previous.ids) if self.previous else []

    def mask(self, mask_id: int) -> np.ndarray:
        return self.ctx.masks.get(mask_id)

    def masks(self, candidates: list[Candidate]) -> dict[int, np.ndarray]:
        return {c.id: self.mask(c.id) for c in candidates}

    def overlay(self, candidates: list[Candidate]) -> np.ndarray:
        return candidates_overlay(self.image, candidates, self.masks(candidates))

    def emit(self, kind: EventKind, text: str = "", *, image: np.ndarray | None = None,
             data: dict[str, Any] | None = None, ms: float = 0.0) -> StepEvent:
        event = StepEvent(kind=kind, text=text, node=self.node, image=image, data=data or {}, ms=ms)
        self.write(event)
        return event


class Planner(ABC):
    """Decides what to segment, judges the candidates, and words the answer. It never runs a tool: it
    returns calls (``Decision.calls``), the graph's tools node runs them, and the planner's next step
    reads their results (``view.results``)."""

    name: str = "planner"
    max_steps: int = 4  # tool batches one plan or inspect step may send before it decides (bounds the graph)

    @property
    def label(self) -> str:
        """How answers name this planner ("the offline planner", "gpt-4o via an OpenAI-compatible API")."""
        return self.name

    @abstractmethod
    def plan(self, view: PlannerView) -> Decision:
        """The first calls for the question (or ``finish`` when no segmentation is needed)."""

    @abstractmethod
    def inspect(self, view: PlannerView) -> Decision:
        """Judge the candidates: ``finish`` with a selection, or ``calls`` for another round."""

    @abstractmethod
    def fallback(self, view: PlannerView) -> Decision:
        """The selection when the round limit ends the run before the planner finished."""

    @abstractmethod
    def answer(self, view: PlannerView, decision: Decision) -> str:
        """The final answer text for ``decision.ids``; it says which planner produced it."""
