"""The LangGraph state machine: plan -> tools -> inspect -> (tools -> inspect)* -> answer.

``plan`` and ``inspect`` ask the planner for a ``Decision``: tool calls, or finish. ``tools`` runs
every pending call through ``tools.executor`` (the only place tools run) and goes on to
``inspect`` after a segment round, or back to the step that made the calls otherwise (to read an
examine's crops, a finishing call's selection, a presence probe, or an invalid call to correct).
``answer`` words the result. ``round`` counts segment rounds; after ``1 + max_rounds`` of them
inspect must finish. Nodes get the run's image, segmenter, planner and masks from the run context
(``context=`` of ``graph.stream``), which is never checkpointed; the state holds ids and text.
"""

from __future__ import annotations

import time
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agent.planners.base import PlannerView, RunContext
from agent.state import AgentState, Phase, PreviousAnswer, update
from tools.context import ToolContext
from tools.executor import is_segment_round, recorded, run_calls
from tools.schemas import ToolCall, ToolResult


def _view(state: AgentState, runtime: Runtime[RunContext], node: str) -> PlannerView:
    return PlannerView(state=state, ctx=runtime.context, node=node, write=runtime.stream_writer)


def _listed(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [recorded(c).model_dump(exclude_defaults=True) for c in calls]


def _calls_text(calls: list[ToolCall]) -> str:
    return ", ".join(f"{c.name}({c.arguments})" for c in map(recorded, calls))


def _decide(state: AgentState, runtime: Runtime[RunContext], phase: Phase) -> dict:
    view = _view(state, runtime, phase)
    planner = runtime.context.planner
    start = time.perf_counter()
    decision = planner.plan(view) if phase == "plan" else planner.inspect(view)
    ms = (time.perf_counter() - start) * 1000
    if phase == "plan":
        text = decision.note or (f"plan: {_calls_text(decision.calls)}" if decision.calls
                                 else "plan: nothing to segment")
        view.emit("plan", text, data={"calls": _listed(decision.calls), "finish": decision.finish}, ms=ms)
    else:
        text = decision.note or (f"keep {decision.ids or 'nothing'}" if decision.finish
                                 else f"refine: {_calls_text(decision.calls)}")
        view.emit("verdict", text, data={"finish": decision.finish, "ids": decision.ids,
                                          "calls": _listed(decision.calls)}, ms=ms)
    fields: dict[str, Any] = {"decision": decision, "pending": decision.calls, "phase": phase}
    if decision.memory is not None:
        fields["memory"] = decision.memory
    return update(**fields)


def plan_node(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    return _decide(state, runtime, "plan")


def inspect_node(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    return _decide(state, runtime, "inspect")


def _announce(view: PlannerView, call: ToolCall) -> None:
    data: dict[str, Any] = {"name": call.name, "arguments": call.arguments}
    if call.probe:
        data["probe"] = True
    view.emit("tool_call", f"{call.name or '?'} {call.arguments}" + (" (presence probe)" if call.probe else ""),
              data=data)


def _report(view: PlannerView, result: ToolResult) -> None:
    name = result.call.name
    if not result.ok:
        text = result.error if result.status == "not_run" else f"error: {result.error}"
        view.emit("tool_result", text or "", data={"name": name, "error": result.error}, ms=result.ms)
    elif result.kind == "segment":
        data = {"name": name, "presence": result.presence, "ids": [c.id for c in result.candidates],
                "concept": result.concept}
        view.emit("tool_result", result.text, data={**data, "probe": True} if result.call.probe else data,
                  ms=result.ms)
    elif result.kind == "examine":
        extra = {"measurements": [m.model_dump() for m in result.measurements]} if result.measurements else {}
        view.emit("tool_result", result.text, data={"name": name, "ids": result.ids, **extra}, ms=result.ms)
        for mask_id, crop in zip(result.ids if result.images else [], result.images, strict=True):  # measure: none
            view.emit("overlay", f"crop of #{mask_id}", image=crop, data={"ids": [mask_id], "crop": True})
    else:
        ids = result.selection.ids if result.selection else []
        view.emit("tool_result", result.text, data={"name": name, "ids": ids}, ms=result.ms)


def tools_node(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    """Run every pending call (through ``tools.executor``), stream each call and result, keep what they found."""
    view = _view(state, runtime, "tools")
    run = runtime.context
    ctx = ToolContext(image=run.image, segmenter=run.segmenter, masks=run.masks, candidates=state.candidates,
                      shown=view.candidates() or view.previous_candidates(), next_id=state.next_id,
                      round=state.round + 1, turn=state.turn, geometry=run.geometry, tried=dict(state.tried_calls))
    results = run_calls(state.pending, ctx, on_call=lambda call: _announce(view, call),
                        on_result=lambda result: _report(view, result))
    run.batch_images = [image for result in results for image in result.images]
    presence, tried = dict(state.presence), list(state.concepts_tried)
    for result in results:
        if result.kind == "segment" and result.ok and not result.call.probe and result.presence is not None:
            presence[result.prompt or ""] = round(result.presence, 4)
            if result.phrase and result.phrase not in tried:
                tried.append(result.phrase)
    measured = [m for result in results if result.ok for m in result.measurements]
    segment_round = is_segment_round(state.pending)
    round_ = state.round + 1 if segment_round else state.round
    shown = [c for c in ctx.candidates if c.turn == state.turn]
    if segment_round and shown:
        view.emit("overlay", f"round {round_}: {len(shown)} candidate(s), labelled by id", image=view.overlay(shown),
                  data={"ids": [c.id for c in shown], "round": round_})
    return update(candidates=ctx.candidates, presence=presence, concepts_tried=tried, next_id=ctx.next_id,
                  round=round_, pending=[], results=results, measurements=measured or state.measurements,
                  tried_calls=ctx.tried)


def answer_node(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    view = _view(state, runtime, "answer")
    planner = runtime.context.planner
    decision = state.decision
    start = time.perf_counter()
    if not decision.finish:
        decision = planner.fallback(view)
        view.emit("verdict", decision.note or "round limit reached", data={"finish": True, "ids": decision.ids})
    known = {c.id for c in state.candidates}
    decision = decision.model_copy(update={"ids": [i for i in decision.ids if i in known]})
    text = planner.answer(view, decision)
    ms = (time.perf_counter() - start) * 1000
    concepts = sorted({c.concept for c in state.by_id(decision.ids)})
    previous = PreviousAnswer(question=state.question, ids=decision.ids, answer=text, concepts=concepts,
                              turn=state.turn)
    return update(selection=decision.ids, answer=text, status="done", decision=decision, previous=previous,
                  answer_ms=ms)


def _after_decision(state: AgentState) -> str:
    decision = state.decision
    if decision.finish:
        return "answer"
    if state.phase == "plan":
        return "tools"  # with no calls, an empty segment round: inspect then judges that nothing was found
    if not decision.calls:
        return "answer"  # inspect gave up: the planner's fallback
    if is_segment_round(decision.calls) and state.round > state.max_rounds:
        return "answer"  # the round limit: the planner's fallback
    return "tools"


def _after_tools(state: AgentState) -> str:
    return "inspect" if is_segment_round([r.call for r in state.results]) else state.phase


def build_graph(checkpointer: Any = None) -> Any:
    graph = StateGraph(AgentState, context_schema=RunContext)
    graph.add_node("plan", plan_node)
    graph.add_node("tools", tools_node)
    graph.add_node("inspect", inspect_node)
    graph.add_node("answer", answer_node)
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", _after_decision, {"tools": "tools", "answer": "answer"})
    graph.add_conditional_edges("inspect", _after_decision, {"tools": "tools", "answer": "answer"})
    graph.add_conditional_edges("tools", _after_tools, {"plan": "plan", "inspect": "inspect"})
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer)


def recursion_limit(max_rounds: int, max_steps: int) -> int:
    """LangGraph's step cap: each of plan and the 1 + max_rounds inspects may send ``max_steps`` batches
    (a planner visit and a tools visit each) and decide once more; then answer, and some slack."""
    return (2 * max_steps + 1) * (max_rounds + 2) + 6
