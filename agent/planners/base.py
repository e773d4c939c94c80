"""The interface every planner implements, and the view of a run it works on."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.errors import PlannerError  # noqa: F401  (re-exported)
from agent.results import StepEvent
from agent.state import AgentState, Decision
from agent.store import MaskStore
from segmenter.facade import Segmenter
from tools.examine import candidates_overlay
from tools.schemas import Candidate


@dataclass
class RunContext:
    """Per-run objects the graph's nodes need but the checkpointed state must not hold."""

    segmenter: Segmenter
    image: np.ndarray
    planner: Planner
    store: MaskStore
    thread_id: str
    emit_fn: Callable[[StepEvent], None]
    _masks: dict[int, np.ndarray] = field(default_factory=dict)

    def mask(self, mask_id: int) -> np.ndarray:
        if mask_id not in self._masks:
            self._masks[mask_id] = self.store.get_mask(self.thread_id, mask_id)
        return self._masks[mask_id]

    def keep_masks(self, masks: dict[int, np.ndarray]) -> None:
        self.store.put_masks(self.thread_id, masks)
        self._masks.update(masks)

    def emit(self, kind: str, text: str = "", *, node: str = "", image: np.ndarray | None = None,
             data: dict[str, Any] | None = None, ms: float = 0.0) -> StepEvent:
        event = StepEvent(kind=kind, text=text, node=node, image=image, data=data or {}, ms=ms)
        self.emit_fn(event)
        return event


@dataclass
class PlannerView:
    """What a planner sees at a step: the state (read-only) and the run's image, masks and segmenter."""

    state: AgentState
    ctx: RunContext
    node: str = ""

    @property
    def question(self) -> str:
        return self.state["question"]

    @property
    def image(self) -> np.ndarray:
        return self.ctx.image

    @property
    def image_area(self) -> int:
        h, w = self.image.shape[:2]
        return h * w

    @property
    def turn(self) -> int:
        return self.state.get("turn", 1)

    @property
    def round(self) -> int:
        return self.state.get("round", 0)

    @property
    def memory(self) -> dict[str, Any]:
        return self.state.get("memory") or {}

    @property
    def previous(self) -> dict[str, Any]:
        return self.state.get("previous") or {}

    def all_candidates(self) -> list[Candidate]:
        return [Candidate.model_validate(c) for c in self.state.get("candidates", [])]

    def candidates(self) -> list[Candidate]:
        """This turn's candidates."""
        return [c for c in self.all_candidates() if c.turn == self.turn]

    def by_id(self, ids: list[int]) -> list[Candidate]:
        known = {c.id: c for c in self.all_candidates()}
        return [known[i] for i in ids if i in known]

    def mask(self, mask_id: int) -> np.ndarray:
        return self.ctx.mask(mask_id)

    def masks(self, candidates: list[Candidate]) -> dict[int, np.ndarray]:
        return {c.id: self.ctx.mask(c.id) for c in candidates}

    def overlay(self, candidates: list[Candidate]) -> np.ndarray:
        return candidates_overlay(self.image, candidates, self.masks(candidates))

    def emit(self, kind: str, text: str = "", **kwargs: Any) -> StepEvent:
        return self.ctx.emit(kind, text, node=kwargs.pop("node", self.node), **kwargs)


class Planner(ABC):
    """Decides what to segment, judges the candidates, and words the answer."""

    name: str = "planner"

    @property
    def label(self) -> str:
        """How answers name this planner ("the offline planner", "gpt-4o via an OpenAI-compatible API")."""
        return self.name

    @abstractmethod
    def plan(self, view: PlannerView) -> Decision:
        """The first segment calls for the question (or ``finish`` when no segmentation is needed)."""

    @abstractmethod
    def inspect(self, view: PlannerView) -> Decision:
        """Judge the candidates: ``finish`` with a selection, or ``calls`` for another round."""

    def refine(self, view: PlannerView, decision: Decision) -> Decision:
        """Turn inspect's wish for another round into segment calls (default: run them as given)."""
        return Decision(calls=decision.calls, note=decision.note)

    @abstractmethod
    def fallback(self, view: PlannerView) -> Decision:
        """The selection when the round limit ends the run before the planner finished."""

    @abstractmethod
    def answer(self, view: PlannerView, decision: Decision) -> str:
        """The final answer text for ``decision.ids``; it says which planner produced it."""
