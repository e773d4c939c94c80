"""The LangGraph state machine: plan -> segment -> inspect -> (refine -> segment)* -> answer.

Nodes read the run's image, segmenter, planner and mask store from the run context
(``context=`` of ``graph.stream``), which is never checkpointed; the state holds ids and text.
``round`` counts segment rounds; after ``1 + max_rounds`` of them inspect must finish.
"""

from __future__ import annotations

import time
from typing import Any

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agent.planners.base import PlannerView, RunContext
from agent.state import MAX_EXCHANGES, AgentState, Decision, PlannedCall
from tools.registry import TOOLS, parse_call
from tools.schemas import ToolError
from tools.segment import segment_concept, segment_geometry


def _view(state: AgentState, runtime: Runtime[RunContext], node: str) -> PlannerView:
    ctx = runtime.context
    writer = get_stream_writer()
    ctx.emit_fn = writer  # events stream out through LangGraph's custom stream
    return PlannerView(state=state, ctx=ctx, node=node)


def _merge_memory(state: AgentState, decision: Decision) -> dict[str, Any]:
    return {**(state.get("memory") or {}), **decision.memory}


def _calls_text(calls: list[PlannedCall]) -> str:
    return ", ".join(f"{c.name}({c.arguments})" for c in calls)


def plan_node(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    view = _view(state, runtime, "plan")
    start = time.perf_counter()
    decision = runtime.context.planner.plan(view)
    ms = (time.perf_counter() - start) * 1000
    text = decision.note or (f"plan: {_calls_text(decision.calls)}" if decision.calls else "plan: nothing to segment")
    view.emit("plan", text, data={"calls": [c.model_dump() for c in decision.calls], "finish": decision.finish},
              ms=ms)
    return {"pending": [c.model_dump() for c in decision.calls], "decision": decision.model_dump(),
            "memory": _merge_memory(state, decision)}


def segment_node(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    view = _view(state, runtime, "segment")
    ctx = runtime.context
    candidates = list(state.get("candidates", []))
    presence = dict(state.get("presence", {}))
    tried = list(state.get("concepts_tried", []))
    next_id = state.get("next_id", 1)
    round_ = state.get("round", 0) + 1
    results = []
    for raw in state.get("pending", []):
        call = PlannedCall.model_validate(raw)
        view.emit("tool_call", f"{call.name} {call.arguments}", data={"name": call.name, "arguments": call.arguments})
        start = time.perf_counter()
        try:
            spec, args = parse_call(call.name, call.arguments)
            if spec.kind != "segment":
                raise ToolError(f"{call.name} is not a segmentation tool")
            if spec.name == "segment_concept":
                outcome = segment_concept(ctx.segmenter, args, next_id=next_id, round_=round_, label=call.label)
            else:
                outcome = segment_geometry(ctx.segmenter, args, next_id=next_id, round_=round_, label=call.label,
                                           parents=call.parents)
        except ToolError as exc:
            ms = (time.perf_counter() - start) * 1000
            view.emit("tool_result", f"error: {exc}", data={"name": call.name, "error": str(exc)}, ms=ms)
            results.append({"call_id": call.call_id, "name": call.name, "text": f"error: {exc}", "error": True})
            continue
        ms = (time.perf_counter() - start) * 1000
        new = [c.model_copy(update={"turn": view.turn}) for c in outcome.candidates]
        ctx.keep_masks(outcome.masks)
        candidates += [c.model_dump() for c in new]
        next_id += len(new)
        presence[outcome.prompt] = round(outcome.presence, 4)
        phrase = getattr(args, "concept", None)
        if phrase and phrase not in tried:
            tried.append(phrase)
        view.emit("tool_result", outcome.text, ms=ms,
                  data={"name": call.name, "presence": outcome.presence, "ids": [c.id for c in new],
                        "concept": outcome.concept})
        results.append({"call_id": call.call_id, "name": call.name, "text": outcome.text, "error": False})
    update = {"candidates": candidates, "presence": presence, "concepts_tried": tried, "next_id": next_id,
              "round": round_, "pending": [], "last_results": results}
    turn_candidates = [c for c in candidates if c.get("turn") == view.turn]
    if turn_candidates:
        from tools.schemas import Candidate

        shown = [Candidate.model_validate(c) for c in turn_candidates]
        view.emit("overlay", f"round {round_}: {len(shown)} candidate(s), labelled by id", image=view.overlay(shown),
                  data={"ids": [c.id for c in shown], "round": round_})
    return update


def inspect_node(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    view = _view(state, runtime, "inspect")
    start = time.perf_counter()
    decision = runtime.context.planner.inspect(view)
    ms = (time.perf_counter() - start) * 1000
    if decision.finish:
        text = decision.note or f"keep {decision.ids or 'nothing'}"
    else:
        text = decision.note or f"refine: {_calls_text(decision.calls)}"
    view.emit("verdict", text, data={"finish": decision.finish, "ids": decision.ids,
                                      "calls": [c.model_dump() for c in decision.calls]}, ms=ms)
    return {"decision": decision.model_dump(), "memory": _merge_memory(state, decision)}


def refine_node(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    view = _view(state, runtime, "refine")
    start = time.perf_counter()
    decision = runtime.context.planner.refine(view, Decision.model_validate(state["decision"]))
    ms = (time.perf_counter() - start) * 1000
    view.emit("plan", decision.note or f"refine: {_calls_text(decision.calls)}",
              data={"calls": [c.model_dump() for c in decision.calls]}, ms=ms)
    return {"pending": [c.model_dump() for c in decision.calls], "memory": _merge_memory(state, decision)}


def answer_node(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    view = _view(state, runtime, "answer")
    planner = runtime.context.planner
    decision = Decision.model_validate(state.get("decision") or {})
    start = time.perf_counter()
    if not decision.finish:
        decision = planner.fallback(view)
        view.emit("verdict", decision.note or "round limit reached", data={"finish": True, "ids": decision.ids})
    known = {c["id"] for c in state.get("candidates", [])}
    ids = [i for i in decision.ids if i in known]
    decision = decision.model_copy(update={"ids": ids})
    text = planner.answer(view, decision)
    ms = (time.perf_counter() - start) * 1000
    concepts = sorted({c["concept"] for c in state.get("candidates", []) if c["id"] in ids})
    return {
        "selection": ids, "answer": text, "status": "done", "decision": decision.model_dump(),
        "previous": {"question": state["question"], "ids": ids, "answer": text, "concepts": concepts,
                     "turn": view.turn},
        "exchanges": (state.get("exchanges") or [])[-MAX_EXCHANGES:],
        "answer_ms": ms,
    }


def _after_plan(state: AgentState) -> str:
    return "answer" if (state.get("decision") or {}).get("finish") else "segment"


def _after_inspect(state: AgentState) -> str:
    decision = state.get("decision") or {}
    if decision.get("finish"):
        return "answer"
    if decision.get("calls") and state.get("round", 0) <= state.get("max_rounds", 3):
        return "refine"
    return "answer"


def build_graph(checkpointer: Any = None):
    graph = StateGraph(AgentState, context_schema=RunContext)
    graph.add_node("plan", plan_node)
    graph.add_node("segment", segment_node)
    graph.add_node("inspect", inspect_node)
    graph.add_node("refine", refine_node)
    graph.add_node("answer", answer_node)
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", _after_plan, {"segment": "segment", "answer": "answer"})
    graph.add_edge("segment", "inspect")
    graph.add_conditional_edges("inspect", _after_inspect, {"refine": "refine", "answer": "answer"})
    graph.add_edge("refine", "segment")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer)


def recursion_limit(max_rounds: int) -> int:
    """LangGraph's step cap: plan, answer and 3 nodes per round, with slack."""
    return 8 + 3 * (max_rounds + 1)


__all__ = ["TOOLS", "build_graph", "recursion_limit"]
