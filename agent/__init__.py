"""MedSAM3 Agent: answer clinical segmentation questions with masks.

``from agent import Agent; Agent().run("find the polyps", image="x.jpg")``. Names are imported
lazily so ``medsam3-agent --help`` (which imports ``agent.cli``) stays fast.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "Agent": "agent.core",
    "AgentResult": "agent.results",
    "ConceptMask": "agent.results",
    "StepEvent": "agent.results",
    "AgentError": "agent.errors",
    "PlannerError": "agent.errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'agent' has no attribute {name!r}")
