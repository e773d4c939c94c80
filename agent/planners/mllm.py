"""The MLLM planner: a multimodal chat model drives the tools (OpenAI-compatible, native or text tool calls).

Context is bounded: every request holds the system prompt, one user message with the question,
the prompts tried and the current candidates, the last tool exchange (assistant tool calls, tool
messages with the text results), and a user message with the latest overlay (tool messages are
text-only, so images always go in a user message after them).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from agent.errors import PlannerError
from agent.mllm.base import ChatClient, LLMReply, ToolsUnsupported, image_data_url
from agent.planners.base import Planner, PlannerView
from agent.state import Decision, Exchange, PlannedCall
from prompts import concept_list, load_prompt
from segmenter.catalog import load_catalog
from tools.answer import report_no_mask, select_masks
from tools.examine import examine_masks
from tools.registry import openai_tools, parse_call, text_tool_list
from tools.schemas import ToolError
from tools.segment import describe_candidates

NOT_RUN = "not run: segmentation calls in the same reply run first; call it again after seeing their results"
BRIEF = 300  # characters of a problem sent back to the model or shown in the trace (a model's input can be huge)
ECHO = 2000  # an invalid call's arguments longer than this (as JSON) are not echoed back or kept


def brief(text: object, limit: int = BRIEF) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


@dataclass
class _Step:
    """What one reply with tool calls led to."""

    decision: Decision | None  # finish, or segment calls for the segment node
    exchange: Exchange
    images: list[np.ndarray]  # examine's crops, for the next request
    problem: str | None = None  # why none of the reply's calls could be used; None when one was


class MLLMPlanner(Planner):
    """``max_unusable``: replies in a row (across plan and inspect) that have no usable tool call (none at
    all, only invalid ones, a refusal) before the run fails with a ``PlannerError``; an empty answer
    there would read as a negative finding."""

    name = "openai"

    def __init__(self, client: ChatClient, *, max_steps: int = 4, max_unusable: int = 3,
                 max_side: int = 2048) -> None:
        if max_unusable < 1:
            raise ValueError(f"max_unusable must be >= 1, got {max_unusable}")
        self.client = client
        self.max_steps = max_steps  # model calls per plan / inspect step (examine, corrections)
        self.max_unusable = max_unusable
        self.max_side = max_side

    @property
    def label(self) -> str:
        return f"openai:{self.client.model}"

    # --- Planner ----------------------------------------------------------------------------------
    def plan(self, view: PlannerView) -> Decision:
        return self._converse(view, "plan")

    def inspect(self, view: PlannerView) -> Decision:
        return self._converse(view, "inspect")

    def fallback(self, view: PlannerView) -> Decision:
        cands = view.candidates()
        last = max((c.round for c in cands), default=0)
        ids = [c.id for c in cands if c.round == last]
        if ids:
            return Decision(finish=True, ids=ids,
                            note=f"the model did not finish within the limits; keeping the last round's {len(ids)} "
                                 "candidate(s) unchecked")
        presence = view.state.get("presence") or {}
        still_segmenting = bool((view.state.get("decision") or {}).get("calls"))
        if presence and still_segmenting:  # the round limit stopped it; every prompt it ran found nothing
            return Decision(finish=True, note=f"the model did not finish within the round limit; none of its "
                                              f"{len(presence)} prompt(s) found a candidate")
        # the model never concluded and nothing was segmented: "nothing found" would be a false negative
        problem = view.memory.get("problem") or (view.state.get("decision") or {}).get("note") or \
            "no segmentation ran and it called neither select_masks nor report_no_mask"
        raise PlannerError(f"{self.label} gave no usable answer, so the run stopped without one; "
                           f"last problem: {problem}")

    def answer(self, view: PlannerView, decision: Decision) -> str:
        chosen = view.by_id(decision.ids)
        if chosen:
            counts: dict[str, int] = {}
            for c in chosen:
                counts[c.concept] = counts.get(c.concept, 0) + 1
            body = decision.answer or "Selected " + ", ".join(f"{n} {k}" for k, n in counts.items()) + "."
        else:
            body = "Nothing was found" + (f": {decision.answer}" if decision.answer else ".")
        if not decision.answer and decision.note:
            body += f" ({decision.note})"
        return f"{body} [answered by the MLLM planner: {self.client.model} via an OpenAI-compatible API]"

    # --- the conversation -------------------------------------------------------------------------
    def _converse(self, view: PlannerView, phase: str) -> Decision:
        images = self._images(view, phase)
        history = self._last_exchange(view) if phase == "inspect" else []
        # unusable replies in a row; the state's memory carries the count from plan on to inspect
        unusable = int(view.memory.get("unusable", 0))
        problem = str(view.memory.get("problem", ""))
        for _ in range(self.max_steps):
            reply = self._complete(view, lambda h=history, i=images: self._messages(view, h, i))
            if reply.tool_calls:
                step = self._act(view, reply, phase)
                if step.decision is not None:
                    memory = {"exchange": step.exchange.model_dump(), "unusable": 0, "problem": ""}
                    return step.decision.model_copy(update={"memory": memory})
                history = self._exchange_messages(step.exchange)
                images = [images[0], *step.images] if images else step.images
                if step.problem is None:  # an examine ran: usable, the model decides next
                    unusable = 0
                    continue
                problem = step.problem
            else:
                problem = self._no_call_problem(reply)
                history = [{"role": "assistant", "content": reply.text or reply.refusal or ""},
                           {"role": "user", "content": load_prompt("malformed_reply")}]
            if reply.finish_reason == "length":
                problem += " (the reply was cut off at the token limit)"
            unusable += 1
            view.emit("error", f"unusable reply {unusable}/{self.max_unusable}: {problem}",
                      data={"problem": problem})
            if unusable >= self.max_unusable:
                raise PlannerError(f"{self.label} gave {unusable} unusable replies in a row, so the run stopped "
                                   f"without an answer; last problem: {problem}")
        return Decision(note=f"no decision after {self.max_steps} model calls in {phase}",
                        memory={"unusable": unusable, "problem": problem})

    @staticmethod
    def _no_call_problem(reply: LLMReply) -> str:
        if reply.refusal:
            return f"the model refused: {brief(reply.refusal.strip(), 200)!r}"
        if reply.finish_reason == "content_filter":
            return "the endpoint's content filter blocked the reply"
        return f"the reply had no readable tool call: {brief((reply.text or '').strip(), 200)!r}"

    def _act(self, view: PlannerView, reply: LLMReply, phase: str) -> _Step:
        """Validate and sort the reply's calls; finish, hand segment calls on, or answer examine / errors."""
        calls: list[PlannedCall] = []
        results: list[str | None] = []
        problems: list[str] = []
        segments, finishes, examines = [], [], []
        for request in reply.tool_calls:
            call_id = request.id or (f"call_{uuid.uuid4().hex[:12]}" if reply.native else None)
            try:
                if request.error:
                    raise ToolError(request.error)
                spec, args = parse_call(request.name, request.arguments)
            except ToolError as exc:  # told to the model as an error it can correct; the call is not run
                problem = brief(exc)
                problems.append(problem)
                small = len(json.dumps(request.arguments, default=str)) <= ECHO
                call = PlannedCall(name=brief(request.name, 64), arguments=request.arguments if small else {},
                                   call_id=call_id)
                calls.append(call)
                results.append(load_prompt("invalid_tool_call", problem=problem))
                self._emit_call(view, call)
                view.emit("tool_result", f"error: {problem}", data={"name": call.name, "error": problem})
                continue
            calls.append(PlannedCall(name=request.name, arguments=request.arguments, call_id=call_id))
            results.append(None)
            index = len(calls) - 1
            {"segment": segments, "finish": finishes, "examine": examines}[spec.kind].append((index, spec, args))
        exchange = Exchange(phase=phase, text=reply.text, calls=calls, native=reply.native, results=[])
        if segments:
            for index, _, _ in finishes + examines:
                results[index] = NOT_RUN
            exchange.results = [r or "" for r in results]  # the segment node supplies the segment results
            return _Step(Decision(calls=[calls[i] for i, _, _ in segments],
                                  note=f"{self.label}: {', '.join(calls[i].name for i, _, _ in segments)}"),
                         exchange, [])
        for index, spec, args in finishes:
            self._emit_call(view, calls[index])
            try:
                selection = select_masks(view.all_candidates(), args) if spec.name == "select_masks" \
                    else report_no_mask(args)
            except ToolError as exc:
                results[index] = self._tool_error(view, spec.name, exc, problems)
                continue
            exchange.results = [r or "" for r in results]
            return _Step(Decision(finish=True, ids=selection.ids, answer=selection.answer,
                                  note=f"{self.label}: {spec.name} {selection.ids}"), exchange, [])
        extra_images: list[np.ndarray] = []
        examined = False
        for index, spec, args in examines:
            self._emit_call(view, calls[index])
            try:
                cands = view.candidates() or view.by_id(view.previous.get("ids", []))
                outcome = examine_masks(view.image, cands, view.masks(cands), args)
            except ToolError as exc:
                results[index] = self._tool_error(view, spec.name, exc, problems)
                continue
            examined = True
            results[index] = outcome.text + " (the crops follow as images)"
            view.emit("tool_result", outcome.text, data={"name": spec.name, "ids": outcome.ids})
            for mask_id, crop in zip(outcome.ids, outcome.images):
                view.emit("overlay", f"crop of #{mask_id}", image=crop, data={"ids": [mask_id], "crop": True})
            extra_images += outcome.images
        exchange.results = [r or "" for r in results]
        problem = None if examined else brief("; ".join(dict.fromkeys(problems)))
        return _Step(None, exchange, extra_images, problem)

    @staticmethod
    def _tool_error(view: PlannerView, name: str, exc: ToolError, problems: list[str]) -> str:
        """A valid call the tool could not carry out (an unknown mask id): the result text for the model."""
        problem = brief(exc)
        problems.append(problem)
        view.emit("tool_result", f"error: {problem}", data={"name": name, "error": problem})
        return f"error: {problem}"

    @staticmethod
    def _emit_call(view: PlannerView, call: PlannedCall) -> None:
        # segment calls are announced by the segment node that runs them; the rest here
        view.emit("tool_call", f"{call.name or '?'} {call.arguments}", data={"name": call.name,
                                                                            "arguments": call.arguments})

    def _complete(self, view: PlannerView, build: Callable[[], list[dict]]) -> LLMReply:
        tools = openai_tools() if self.client.native_tools else None
        try:
            return self.client.complete(build(), tools)
        except ToolsUnsupported as exc:
            view.emit("error", f"{exc}; switching to the text tool protocol")
            return self.client.complete(build(), None)

    # --- messages ---------------------------------------------------------------------------------
    def _system(self, view: PlannerView) -> str:
        catalog = load_catalog()
        names = view.ctx.segmenter.concepts() or catalog.names
        descriptions = {c.name: c.description for c in catalog.concepts}
        h, w = view.image.shape[:2]
        text = load_prompt("system", concepts=concept_list(names, descriptions), width=w, height=h,
                           max_rounds=view.state.get("max_rounds", 3))
        if not self.client.native_tools:
            text += "\n\n" + load_prompt("text_tool_format", tool_list=text_tool_list())
        return text

    def _context(self, view: PlannerView, image_note: str) -> str:
        prev = view.previous
        previous = ""
        if prev:
            chosen = view.by_id(prev.get("ids", []))
            listed = describe_candidates(chosen, view.image_area) if chosen else "none"
            previous = (f"Earlier in this conversation: question {prev.get('question')!r}; answer "
                        f"{prev.get('answer', '')!r}; selected masks (ids can be selected again): {listed}")
        cands = view.candidates()
        counts: dict[str, int] = {}
        for c in cands:
            counts[c.prompt] = counts.get(c.prompt, 0) + 1
        presence = view.state.get("presence") or {}
        tried = "; ".join(f"{p} (presence {v:.2f}, {counts.get(p, 0)} candidate(s))" for p, v in presence.items())
        return load_prompt(
            "context", question=view.question, previous=previous, tried=tried or "none",
            candidates=describe_candidates(cands, view.image_area) if cands else "none yet",
            rounds_used=view.round, rounds_allowed=1 + int(view.state.get("max_rounds", 3)), images=image_note,
        )

    def _messages(self, view: PlannerView, history: list[dict], images: list[np.ndarray]) -> list[dict]:
        note = ("The image(s) below: the current overlay (candidate masks tinted and labelled by id)"
                + (", then zoomed crops" if len(images) > 1 else "") + ".") if view.candidates() else \
            "The image is below."
        parts = [{"type": "image_url", "image_url": {"url": image_data_url(self._fit(im))}} for im in images]
        context = self._context(view, note)
        if not history:
            return [{"role": "system", "content": self._system(view)},
                    {"role": "user", "content": [{"type": "text", "text": context}, *parts]}]
        return [{"role": "system", "content": self._system(view)}, {"role": "user", "content": context},
                *history, {"role": "user", "content": [{"type": "text", "text": note}, *parts]}]

    def _fit(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        scale = self.max_side / max(h, w)
        if scale >= 1:
            return image
        return cv2.resize(image, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)

    def _images(self, view: PlannerView, phase: str) -> list[np.ndarray]:
        cands = view.candidates()
        if cands:
            return [view.overlay(cands)]  # the same pixels as the segment node's overlay event
        previous = view.by_id(view.previous.get("ids", [])) if phase == "plan" else []
        if previous:
            overlay = view.overlay(previous)
            view.emit("overlay", "the previous answer's masks, labelled by id", image=overlay,
                      data={"ids": [c.id for c in previous]})
            return [overlay]
        return [view.image]

    def _last_exchange(self, view: PlannerView) -> list[dict]:
        stored = (view.memory or {}).get("exchange")
        if not stored:
            return []
        exchange = Exchange.model_validate(stored)
        done = view.state.get("last_results") or []
        by_id = {r["call_id"]: r.get("text", "") for r in done if r.get("call_id")}
        unnamed = iter([r.get("text", "") for r in done if not r.get("call_id")])  # text-protocol calls, in order
        results = []
        for call, result in zip(exchange.calls, exchange.results + [""] * len(exchange.calls)):
            if not result:
                result = by_id.get(call.call_id, "") if call.call_id else next(unnamed, "")
            results.append(result or "no result")
        exchange.results = results
        return self._exchange_messages(exchange)

    @staticmethod
    def _exchange_messages(exchange: Exchange) -> list[dict]:
        if exchange.native and all(c.call_id for c in exchange.calls):
            assistant: dict[str, Any] = {
                "role": "assistant", "content": exchange.text or None,
                "tool_calls": [{"id": c.call_id, "type": "function",
                                "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                               for c in exchange.calls],
            }
            tool_messages = [{"role": "tool", "tool_call_id": c.call_id, "content": r or "no result"}
                             for c, r in zip(exchange.calls, exchange.results)]
            return [assistant, *tool_messages]
        lines = "\n".join(f"- {c.name}: {r or 'no result'}" for c, r in zip(exchange.calls, exchange.results))
        return [{"role": "assistant", "content": exchange.text or ""},
                {"role": "user", "content": f"Tool results:\n{lines}"}]

