"""The one place tool calls run: ``run_tool`` for one call, ``run_calls`` for a planner's batch.

Every call of every planner comes through here (the agent graph's tools node): it is validated
against the tool's argument model, run, and answered with a ``ToolResult``; a call that cannot be
read or carried out is a result with its error, never an exception, so the planner can act on it.
A segmentation call identical to one that already ran this turn (``ToolContext.tried``) is answered
"already tried: <its result>" without asking the segmenter again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from pydantic import BaseModel

from tools.context import ToolContext
from tools.registry import parse_call
from tools.schemas import ToolCall, ToolError, ToolKind, ToolResult

BRIEF = 300  # characters of a problem kept or shown (a model's input can be huge)
ECHO = 2000  # an invalid call's arguments longer than this (as JSON) are neither echoed back nor kept
NOT_RUN_AFTER_SEGMENTS = ("not run: segmentation calls in the same reply run first; call it again after seeing "
                          "their results")
NOT_RUN_FINISHED = "not run: an earlier call of the same reply already finished"
ALREADY_TRIED = "already tried: "  # a repeated segmentation call's answer starts so: the earlier result, not rerun


def brief(text: object, limit: int = BRIEF) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def recorded(call: ToolCall) -> ToolCall:
    """An invalid call as it is kept and echoed: huge arguments dropped."""
    if len(json.dumps(call.arguments, default=str)) <= ECHO:
        return call
    return call.model_copy(update={"arguments": {}})


def kind_of(call: ToolCall) -> ToolKind | None:
    """The kind of tool a call would run, or None when it is invalid."""
    if call.problem is not None:
        return None
    try:
        spec, _ = parse_call(call.name, call.arguments)
    except ToolError:
        return None
    return spec.kind


def repeat_key(name: str, args: BaseModel) -> str:
    """What makes two segmentation calls the same: the tool and its validated arguments (a concept phrase
    compared case- and space-insensitively)."""
    values = args.model_dump(mode="json")
    if isinstance(values.get("concept"), str):
        values["concept"] = " ".join(values["concept"].lower().split())
    return json.dumps({"tool": name, **values}, sort_keys=True)


def _already_tried(call: ToolCall, earlier: ToolResult) -> ToolResult:
    """A repeat answered from the earlier result: its text, prompt, presence and candidate ids; nothing new."""
    return ToolResult(call=call, status="not_run", error=ALREADY_TRIED + earlier.text, prompt=earlier.prompt,
                      phrase=earlier.phrase, concept=earlier.concept, presence=earlier.presence,
                      ids=[c.id for c in earlier.candidates])


_RANK: dict[ToolKind | None, int] = {None: 0, "segment": 0, "finish": 1, "examine": 2}


def run_order(result: ToolResult) -> int:
    """Where a call runs in its batch: invalid and segmentation calls first, then finishing ones, then examine."""
    return _RANK[result.kind]


def is_segment_round(calls: list[ToolCall]) -> bool:
    """A batch with a valid segmentation call (presence probes aside), or an empty one, is a segment round."""
    return not calls or any(not c.probe and kind_of(c) == "segment" for c in calls)


def run_tool(call: ToolCall, ctx: ToolContext) -> ToolResult:
    """Validate ``call`` and run its tool on ``ctx``; errors come back as the result's ``error``."""
    start = time.perf_counter()
    try:
        if call.problem is not None:
            raise ToolError(call.problem)
        spec, args = parse_call(call.name, call.arguments)
        if call.probe and spec.kind != "segment":
            raise ToolError(f"{call.name} cannot be a presence probe; only a segmentation tool can")
    except ToolError as exc:
        return ToolResult(call=recorded(call), status="invalid", error=brief(exc),
                          ms=(time.perf_counter() - start) * 1000)
    key = repeat_key(spec.name, args) if spec.kind == "segment" and not call.probe else None
    if key is not None and key in ctx.tried:  # the same prompt gives the same masks: the segmenter is not asked
        result = _already_tried(call, ctx.tried[key])
    else:
        try:
            result = spec.run(args, ctx, call)
        except ToolError as exc:
            result = ToolResult(call=call, status="failed", error=brief(exc))
        if key is not None and result.ok:
            ctx.tried[key] = result
    return result.model_copy(update={"kind": spec.kind, "ms": (time.perf_counter() - start) * 1000})


def run_calls(calls: list[ToolCall], ctx: ToolContext, *, on_call: Callable[[ToolCall], None] | None = None,
              on_result: Callable[[ToolResult], None] | None = None) -> list[ToolResult]:
    """Run a planner's batch, each call through ``run_tool``; the results come back in call order.

    A batch that segments runs nothing else: its examine and finishing calls are answered "not run"
    (the ids they name may be about to change). Otherwise finishing calls run first, until one
    succeeds, then examine calls. ``on_call`` / ``on_result`` see each call before it runs and its
    result after (the agent streams them into the trace).
    """
    kinds = [kind_of(c) for c in calls]
    segmenting = any(k == "segment" and not c.probe for k, c in zip(kinds, calls, strict=True))
    results: dict[int, ToolResult] = {}
    finished = False
    for i in sorted(range(len(calls)), key=lambda i: _RANK[kinds[i]]):
        call, kind = calls[i], kinds[i]
        if on_call is not None:
            on_call(call if kind is not None else recorded(call))
        if kind in ("finish", "examine") and (segmenting or finished):
            result = ToolResult(call=call, kind=kind, status="not_run",
                                error=NOT_RUN_AFTER_SEGMENTS if segmenting else NOT_RUN_FINISHED)
        else:
            result = run_tool(call, ctx)
            ctx.add(result.candidates)
            finished = finished or (result.kind == "finish" and result.ok)
        results[i] = result
        if on_result is not None:
            on_result(result)
    return [results[i] for i in range(len(calls))]
