"""Planners: the offline one (no LLM) and the MLLM one (OpenAI-compatible chat), behind one interface."""

from agent.planners.base import Planner, PlannerError, PlannerView

__all__ = ["Planner", "PlannerError", "PlannerView"]
