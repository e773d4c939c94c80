"""The MLLM planner: a multimodal chat model drives the tools (OpenAI-compatible, native or text tool calls).

Context is bounded: every request holds the system prompt, one user message with the question,
the prompts tried and the current candidates, the last tool exchange (assistant tool calls, tool
messages with the text results), and a user message with the latest overlay (tool messages are
text-only, so images always go in a user message after them).

The planner never runs a tool. A reply's tool calls go back to the graph as a ``Decision``; its
tools node runs them and returns here (or to inspect, after a segment round), and the next step
shows the model their results. ``MLLMMemory`` carries the reply, the model calls made in this
step and the count of unusable replies from one graph step to the next.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from agent.errors import PlannerError
from agent.mllm.base import ChatClient, LLMReply, ToolsUnsupported, image_data_url
from agent.mllm.frame import MAX_SIDE, Frame, convention_for
from agent.planners.base import Planner, PlannerView
from agent.state import Decision, Phase
from prompts import concept_list, load_prompt
from segmenter.catalog import load_catalog
from tools.executor import ALREADY_TRIED, ECHO, brief, is_segment_round, run_order
from tools.registry import openai_tools, text_tool_list
from tools.schemas import Candidate, ToolCall, ToolResult
from tools.segment import describe_candidates, found_text

MAX_ARGUMENTS = 20_000  # characters of one call's arguments (as JSON) read; a longer call is invalid unread


def _kept(arguments: dict[str, Any]) -> dict[str, Any]:
    """A call's arguments as kept in the planner's memory: dropped when too long to echo."""
    return arguments if len(json.dumps(arguments, default=str)) <= ECHO else {}


class SentReply(BaseModel):
    """A model reply whose tool calls went to the tools node."""

    text: str = ""
    native: bool = True  # native tool calls (else the text protocol)
    cut_off: bool = False  # the reply stopped at the token limit
    arguments: list[dict[str, Any]] = Field(default_factory=list)  # each call's as written (the model's frame)


class MLLMMemory(BaseModel):
    """What the planner carries from one graph step to the next."""

    reply: SentReply | None = None  # the last reply whose calls ran; the next request shows their results
    steps: int = 0  # model calls made in this plan / inspect step
    unusable: int = 0  # unusable replies in a row, across plan and inspect
    problem: str = ""  # the last unusable reply's problem


class MLLMPlanner(Planner):
    """``max_unusable``: replies in a row (across plan and inspect) that have no usable tool call (none at
    all, only invalid ones, a refusal) before the run fails with a ``PlannerError``; an empty answer
    there would read as a negative finding.

    ``coordinate_convention``: how the model's boxes and points are read ("pixels" of the image as sent,
    "norm1000", or "auto": by model family, see ``agent.mllm.frame``); ``max_side``: the longest side of an
    image sent."""

    name = "openai"

    def __init__(self, client: ChatClient, *, max_steps: int = 4, max_unusable: int = 3,
                 max_side: int = MAX_SIDE, coordinate_convention: str = "auto") -> None:
        if max_unusable < 1:
            raise ValueError(f"max_unusable must be >= 1, got {max_unusable}")
        self.client = client
        self.max_steps = max_steps  # model calls per plan / inspect step (examine, corrections)
        self.max_unusable = max_unusable
        self.max_side = max_side
        self.coordinate_convention = convention_for(client.model, coordinate_convention)  # a bad one fails here

    @property
    def label(self) -> str:
        return f"openai:{self.client.model}"

    def frame(self, image: np.ndarray) -> Frame:
        """The frame ``image`` is sent in: its size as sent and how the model's coordinates read."""
        h, w = image.shape[:2]
        return Frame.for_model(w, h, self.client.model, self.coordinate_convention, max_side=self.max_side)

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
        presence = view.state.presence
        still_segmenting = bool(view.state.decision.calls)
        if presence and still_segmenting:  # the round limit stopped it; every prompt it ran found nothing
            return Decision(finish=True, note=f"the model did not finish within the round limit; none of its "
                                              f"{len(presence)} prompt(s) found a candidate")
        # the model never concluded and nothing was segmented: "nothing found" would be a false negative
        problem = view.memory(MLLMMemory).problem or view.state.decision.note or \
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
    def _converse(self, view: PlannerView, phase: Phase) -> Decision:
        memory = view.memory(MLLMMemory)
        reply = memory.reply  # the last reply, whose calls have just run (None at a turn's start)
        if reply is not None:
            finished = next((r for r in view.results if r.kind == "finish" and r.ok), None)
            if finished is not None and finished.selection is not None:  # select_masks or report_no_mask
                ids = finished.selection.ids
                return Decision(finish=True, ids=ids, answer=finished.selection.answer, memory=MLLMMemory(),
                                note=f"{self.label}: {finished.call.name} {ids}")
        steps, unusable, problem = 0, memory.unusable, memory.problem  # unusable replies count on across steps
        new_round = reply is not None and is_segment_round([r.call for r in view.results])
        images = self._images(view, phase, announce=reply is None, new_round=new_round)
        history: list[dict] = []
        if reply is not None:
            history = self._exchange_messages(view, reply, view.results)
            if not is_segment_round([r.call for r in view.results]):  # back from an examine or failed calls
                steps = memory.steps  # the same step goes on
                images = [images[0], *view.ctx.batch_images]
                unusable, problem = self._judge(view, reply, unusable, problem)
        while steps < self.max_steps:
            steps += 1
            answer = self._complete(view, partial(self._messages, view, history, images))
            if answer.tool_calls:
                calls = self._calls(answer, self.frame(view.image))
                if is_segment_round(calls):  # a reply that segments is usable
                    unusable, problem = 0, ""
                sent = SentReply(text=answer.text, native=answer.native, cut_off=answer.finish_reason == "length",
                                 arguments=[_kept(r.arguments) for r in answer.tool_calls])
                return Decision(calls=calls, note=f"{self.label}: {', '.join(c.name or '?' for c in calls)}",
                                memory=MLLMMemory(reply=sent, steps=steps, unusable=unusable, problem=problem))
            problem = self._no_call_problem(answer)
            history = [{"role": "assistant", "content": answer.text or answer.refusal or ""},
                       {"role": "user", "content": load_prompt("malformed_reply")}]
            if answer.finish_reason == "length":
                problem += " (the reply was cut off at the token limit)"
            unusable = self._unusable(view, unusable + 1, problem)
        return Decision(note=f"no decision after {self.max_steps} model calls in {phase}",
                        memory=MLLMMemory(unusable=unusable, problem=problem))

    def _judge(self, view: PlannerView, reply: SentReply, unusable: int, problem: str) -> tuple[int, str]:
        """A reply without segmentation or finish is usable when an examine ran; else count it as unusable."""
        if any(r.kind == "examine" and r.ok for r in view.results):
            return 0, problem
        failed = sorted((r for r in view.results if r.status in ("invalid", "failed")), key=run_order)
        problem = brief("; ".join(dict.fromkeys(r.error or "" for r in failed)))
        if reply.cut_off:
            problem += " (the reply was cut off at the token limit)"
        return self._unusable(view, unusable + 1, problem), problem

    def _unusable(self, view: PlannerView, unusable: int, problem: str) -> int:
        """Count an unusable reply: say so in the trace; too many in a row end the run."""
        view.emit("error", f"unusable reply {unusable}/{self.max_unusable}: {problem}", data={"problem": problem})
        if unusable >= self.max_unusable:
            raise PlannerError(f"{self.label} gave {unusable} unusable replies in a row, so the run stopped "
                               f"without an answer; last problem: {problem}")
        return unusable

    @staticmethod
    def _no_call_problem(reply: LLMReply) -> str:
        if reply.refusal:
            return f"the model refused: {brief(reply.refusal.strip(), 200)!r}"
        if reply.finish_reason == "content_filter":
            return "the endpoint's content filter blocked the reply"
        return f"the reply had no readable tool call: {brief((reply.text or '').strip(), 200)!r}"

    @staticmethod
    def _calls(reply: LLMReply, frame: Frame) -> list[ToolCall]:
        """The reply's tool calls as typed calls (boxes and points in original pixels); one that could not be
        read carries its problem."""
        calls = []
        for request in reply.tool_calls:
            call_id = request.id or (f"call_{uuid.uuid4().hex[:12]}" if reply.native else None)
            name, arguments, problem = brief(request.name, 64), request.arguments, request.error  # a model's input
            # may be huge: a long name is cut (no tool has one), long arguments are not read
            size = len(json.dumps(arguments, default=str))
            if problem is None and size > MAX_ARGUMENTS:
                problem = f"{name}: invalid arguments ({size} characters of JSON; at most {MAX_ARGUMENTS} are read)"
                arguments = {}
            if problem is None and name == "segment_geometry":
                arguments = frame.geometry_to_original(arguments)
            calls.append(ToolCall(name=name, arguments=arguments, call_id=call_id, problem=problem))
        return calls

    def _result_text(self, view: PlannerView, result: ToolResult) -> str:
        """A call's result as the model reads it in the next request (candidate boxes in its frame)."""
        repeat = (result.error or "").startswith(ALREADY_TRIED)
        if result.kind == "segment" and (result.ok or repeat) and not result.call.probe and result.prompt:
            found = result.candidates if result.ok else view.by_id(result.ids)  # a repeat: the earlier ones
            text = found_text(result.prompt, result.presence or 0.0, found, view.image_area,
                              box=self.frame(view.image).box_from_original)
            return ALREADY_TRIED + text if repeat else text
        if result.status == "invalid":
            return load_prompt("invalid_tool_call", problem=result.error)
        if result.status == "failed":
            where = f"; {self.frame(view.image).describe()}" if result.call.name == "segment_geometry" else ""
            return f"error: {result.error}{where}"
        if result.status == "not_run":
            return result.error or "not run"
        if result.kind == "examine" and result.images:  # measure is an examine without crops
            return result.text + " (the crops follow as images)"
        return result.text

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
        text = load_prompt("system", concepts=concept_list(names, descriptions),
                           frame=self.frame(view.image).describe(), max_rounds=view.state.max_rounds)
        if not self.client.native_tools:
            text += "\n\n" + load_prompt("text_tool_format", tool_list=text_tool_list())
        return text

    def _context(self, view: PlannerView, image_note: str) -> str:
        prev = view.previous
        previous = ""
        if prev is not None:
            chosen = view.by_id(prev.ids)
            box = self.frame(view.image).box_from_original
            listed = describe_candidates(chosen, view.image_area, box=box) if chosen else "none"
            previous = (f"Earlier in this conversation: question {prev.question!r}; answer "
                        f"{prev.answer!r}; selected masks (ids can be selected again): {listed}")
        cands = view.candidates()
        counts: dict[str, int] = {}
        for c in cands:
            counts[c.prompt] = counts.get(c.prompt, 0) + 1
        presence = view.state.presence
        tried = "; ".join(f"{p} (presence {v:.2f}, {counts.get(p, 0)} candidate(s))" for p, v in presence.items())
        return load_prompt(
            "context", question=view.question, previous=previous, tried=tried or "none",
            candidates=describe_candidates(cands, view.image_area, box=self.frame(view.image).box_from_original)
            if cands else "none yet",
            rounds_used=view.round, rounds_allowed=1 + view.state.max_rounds, images=image_note,
        )

    def _messages(self, view: PlannerView, history: list[dict], images: list[np.ndarray]) -> list[dict]:
        cands = view.candidates()
        drawn = "" if len(self._drawn(cands)) == len(cands) else \
            " of the latest prompt's candidates (earlier ones are listed, not drawn, and can still be selected)"
        note = ("The image(s) below: the current overlay" + drawn + " (candidate masks tinted and labelled by id)"
                + (", then zoomed crops" if len(images) > 1 else "") + ".") if cands else "The image is below."
        frame = self.frame(view.image)
        parts = [{"type": "image_url", "image_url": {"url": image_data_url(frame.shrink(im))}} for im in images]
        context = self._context(view, note)
        if not history:
            return [{"role": "system", "content": self._system(view)},
                    {"role": "user", "content": [{"type": "text", "text": context}, *parts]}]
        return [{"role": "system", "content": self._system(view)}, {"role": "user", "content": context},
                *history, {"role": "user", "content": [{"type": "text", "text": note}, *parts]}]

    @staticmethod
    def _drawn(cands: list[Candidate]) -> list[Candidate]:
        """The candidates the overlay draws: the latest segment round that found any. Masks of superseded
        prompts leave the picture (as in SAM 3 Agent) but stay listed and selectable by id."""
        last = max((c.round for c in cands), default=0)
        return [c for c in cands if c.round == last]

    def _images(self, view: PlannerView, phase: Phase, *, announce: bool, new_round: bool = False) -> list[np.ndarray]:
        """The step's first image: the overlay of the latest prompt's candidates, else (planning a follow-up)
        the previous answer's masks, else the image itself."""
        cands = view.candidates()
        if cands:
            drawn = self._drawn(cands)
            overlay = view.overlay(drawn)  # all of them: the same pixels as the tools node's overlay event
            if new_round and len(drawn) < len(cands):  # else the trace would not show what the model saw
                view.emit("overlay", f"sent to the model: the latest prompt's {len(drawn)} candidate(s)",
                          image=overlay, data={"ids": [c.id for c in drawn], "mllm": True})
            return [overlay]
        previous = view.previous_candidates() if phase == "plan" else []
        if previous:
            overlay = view.overlay(previous)
            if announce:
                view.emit("overlay", "the previous answer's masks, labelled by id", image=overlay,
                          data={"ids": [c.id for c in previous]})
            return [overlay]
        return [view.image]

    def _exchange_messages(self, view: PlannerView, reply: SentReply, results: list[ToolResult]) -> list[dict]:
        """The reply's tool calls and what they returned, as the model reads them."""
        calls = [r.call for r in results]
        texts = [self._result_text(view, r) or "no result" for r in results]
        # echo each call as the model wrote it (its frame), unless the executor dropped it as too long
        written = reply.arguments if len(reply.arguments) == len(calls) else [c.arguments for c in calls]
        if reply.native and all(c.call_id for c in calls):
            assistant: dict[str, Any] = {
                "role": "assistant", "content": reply.text or None,
                "tool_calls": [{"id": c.call_id, "type": "function",
                                "function": {"name": c.name, "arguments": json.dumps(a if c.arguments else {})}}
                               for c, a in zip(calls, written, strict=True)],
            }
            tool_messages = [{"role": "tool", "tool_call_id": c.call_id, "content": text}
                             for c, text in zip(calls, texts, strict=True)]
            return [assistant, *tool_messages]
        lines = "\n".join(f"- {c.name}: {text}" for c, text in zip(calls, texts, strict=True))
        return [{"role": "assistant", "content": reply.text or ""},
                {"role": "user", "content": f"Tool results:\n{lines}"}]
