"""Errors the agent raises with a message a user can act on."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.results import AgentResult, StepEvent


class AgentError(RuntimeError):
    """A run failed. ``partial`` (set by ``Agent`` when the run had started) is what it computed before the
    failure: an ``AgentResult`` with status "error", the trace so far (tool results included) and no masks."""

    def __init__(self, message: str, *, partial: AgentResult | None = None) -> None:
        super().__init__(message)
        self.partial = partial

    @property
    def trace(self) -> list[StepEvent]:
        return list(self.partial.trace) if self.partial is not None else []


class PlannerError(AgentError):
    """The planner cannot go on (endpoint down, replies it cannot use); the message says why."""
