"""The MLLM planner: a multimodal chat model drives the tools (OpenAI-compatible, native or text tool calls).

Context is bounded: every request holds the system prompt, one user message with the question,
the prompts tried and the current candidates (ids, concept, score, area, box in the model's frame),
the last tool exchange (assistant tool calls, tool messages with the text results), and at most two
images, in a user message after them (tool messages are text-only): the image as it is, then the
overlay of the latest prompt's candidates once there are any (as SAM 3 Agent shows them).

``examine_masks`` is a per-mask check (``agent.planners.mask_check``): the planner sends one short
request per examined mask (its crop as it is and with its outline), reads accept / reject / unsure,
and shows the verdicts to the model as that call's one tool result. Rejected masks leave the overlay
and a selection naming them keeps the rest. ``check_budget`` bounds the check requests of a run.

The planner never runs a tool. A reply's tool calls go back to the graph as a ``Decision``; its
tools node runs them and returns here (or to inspect, after a segment round), and the next step
shows the model their results. ``MLLMMemory`` carries the reply, the model calls made in this
step and the count of unusable replies from one graph step to the next.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from agent.config import CHECK_BUDGET
from agent.errors import PlannerError
from agent.mllm.base import ChatClient, LLMReply, ToolsUnsupported, image_data_url
from agent.mllm.frame import MAX_SIDE, Frame, convention_for
from agent.planners.base import Planner, PlannerView
from agent.planners.mask_check import MaskVerdict, check_messages, parse_verdict
from agent.state import Decision, Phase
from prompts import concept_list, load_prompt
from segmenter.catalog import load_catalog
from tools.examine import mask_crops
from tools.executor import ALREADY_TRIED, ECHO, brief, is_segment_round, run_order
from tools.registry import openai_tools, text_tool_list
from tools.schemas import Candidate, Selection, ToolCall, ToolResult
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
    verdicts: list[MaskVerdict] = Field(default_factory=list)  # this run's per-mask checks
    checks: int = 0  # check requests this run has sent

    @property
    def rejected(self) -> set[int]:
        return {v.id for v in self.verdicts if v.verdict == "reject"}

    def carry(self, **fields: Any) -> MLLMMemory:
        """A new step's memory: ``fields``, with this run's checks carried on."""
        return MLLMMemory(verdicts=self.verdicts, checks=self.checks, **fields)


class MLLMPlanner(Planner):
    """``max_unusable``: replies in a row (across plan and inspect) that have no usable tool call (none at
    all, only invalid ones, a refusal) before the run fails with a ``PlannerError``; an empty answer
    there would read as a negative finding.

    ``coordinate_convention``: how the model's boxes and points are read ("pixels" of the image as sent,
    "norm1000", or "auto": by model family, see ``agent.mllm.frame``); ``max_side``: the longest side of an
    image sent; ``check_budget``: per-mask check requests (``examine_masks``) a run may send; masks beyond it
    are told to the model as not checked."""

    name = "openai"

    def __init__(self, client: ChatClient, *, max_steps: int = 4, max_unusable: int = 3,
                 max_side: int = MAX_SIDE, coordinate_convention: str = "auto",
                 check_budget: int = CHECK_BUDGET) -> None:
        if max_unusable < 1:
            raise ValueError(f"max_unusable must be >= 1, got {max_unusable}")
        if check_budget < 0:
            raise ValueError(f"check_budget must be >= 0, got {check_budget}")
        self.check_budget = check_budget
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
        ids = [c.id for c in self._drawn(view.candidates(), view.memory(MLLMMemory).rejected)]
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
        results = view.results if reply is not None else []
        if reply is not None:
            finished = next((r for r in results if r.kind == "finish" and r.ok), None)
            if finished is not None and finished.selection is not None:  # select_masks or report_no_mask
                return self._finish(finished.call.name, finished.selection, memory)
        steps, unusable, problem = 0, memory.unusable, memory.problem  # unusable replies count on across steps
        history: list[dict] = []
        new_round = reply is not None and is_segment_round([r.call for r in results])
        rejected = memory.rejected
        if reply is not None:
            if not new_round:  # back from an examine or failed calls: the same step goes on
                results, memory = self._check_examined(view, results, memory)
                steps = memory.steps
                unusable, problem = self._judge(view, reply, unusable, problem)
            history = self._exchange_messages(view, reply, results)
        images, note = self._images(view, phase, memory.rejected, announce=reply is None,
                                    changed=new_round or memory.rejected != rejected)
        while steps < self.max_steps:
            steps += 1
            answer = self._complete(view, partial(self._messages, view, history, images, note, memory.rejected))
            if answer.tool_calls:
                calls = self._calls(answer, self.frame(view.image))
                if is_segment_round(calls):  # a reply that segments is usable
                    unusable, problem = 0, ""
                sent = SentReply(text=answer.text, native=answer.native, cut_off=answer.finish_reason == "length",
                                 arguments=[_kept(r.arguments) for r in answer.tool_calls])
                return Decision(calls=calls, note=f"{self.label}: {', '.join(c.name or '?' for c in calls)}",
                                memory=memory.carry(reply=sent, steps=steps, unusable=unusable, problem=problem))
            problem = self._no_call_problem(answer)
            history = [{"role": "assistant", "content": answer.text or answer.refusal or ""},
                       {"role": "user", "content": load_prompt("malformed_reply")}]
            if answer.finish_reason == "length":
                problem += " (the reply was cut off at the token limit)"
            unusable = self._unusable(view, unusable + 1, problem)
        return Decision(note=f"no decision after {self.max_steps} model calls in {phase}",
                        memory=memory.carry(unusable=unusable, problem=problem))

    def _finish(self, name: str, selection: Selection, memory: MLLMMemory) -> Decision:
        """The run's selection: the model's, less the masks the per-mask check rejected (said in the answer)."""
        ids, answer = selection.ids, selection.answer
        note = f"{self.label}: {name} {ids}"
        dropped = [i for i in ids if i in memory.rejected]
        if dropped:
            left = f"{', '.join(f'#{i}' for i in dropped)} left out: the per-mask check rejected " + \
                ("it" if len(dropped) == 1 else "them")
            note += f"; {left}"
            answer = f"{answer} ({left})" if answer else ""
        return Decision(finish=True, ids=[i for i in ids if i not in dropped], answer=answer, memory=MLLMMemory(),
                        note=note)

    # --- the per-mask check -----------------------------------------------------------------------
    def _check_examined(self, view: PlannerView, results: list[ToolResult],
                        memory: MLLMMemory) -> tuple[list[ToolResult], MLLMMemory]:
        """Each ``examine_masks`` result's masks checked (one request each); its text becomes the verdicts."""
        out = []
        for result in results:
            if result.call.name == "examine_masks" and result.ok and result.ids:
                text, memory = self._check(view, result.ids, memory)
                result = result.model_copy(update={"text": text, "images": []})
            out.append(result)
        return out, memory

    def _check(self, view: PlannerView, ids: list[int], memory: MLLMMemory) -> tuple[str, MLLMMemory]:
        """Check each mask not checked yet in this run, within the budget; the verdicts as one text."""
        done = {v.id: v for v in memory.verdicts}
        verdicts, checks, lines, unchecked = list(memory.verdicts), memory.checks, [], []
        frame, area = self.frame(view.image), view.image_area
        for mask_id in dict.fromkeys(ids):
            candidate = next(iter(view.by_id([mask_id])), None)
            if candidate is None:
                continue  # not one of the thread's candidates: examine_masks refused it already
            if mask_id in done:
                lines.append(done[mask_id].line(candidate, area) + " (checked before)")
                continue
            if checks >= self.check_budget:
                unchecked.append(mask_id)
                continue
            checks += 1
            crops = [frame.shrink(c) for c in mask_crops(view.image, view.mask(mask_id))]
            start = time.perf_counter()
            reply = self.client.complete(check_messages(view.question, candidate, area, *crops), None)
            verdict, reason = parse_verdict(reply)
            done[mask_id] = checked = MaskVerdict(id=mask_id, verdict=verdict, reason=reason)
            verdicts.append(checked)
            lines.append(checked.line(candidate, area))
            view.emit("tool_result", f"check of #{mask_id}: {verdict}" + (f" - {reason}" if reason else ""),
                      data={"name": "examine_masks", "ids": [mask_id], "verdict": verdict, "reason": reason,
                            "mllm": True}, ms=(time.perf_counter() - start) * 1000)
        text = "per-mask check (a separate request for each mask, with its crop as it is and with its outline): " + \
            ("; ".join(lines) if lines else "no mask checked")
        if unchecked:
            text += (f"; {', '.join(f'#{i}' for i in unchecked)} not checked: this run's budget of "
                     f"{self.check_budget} MLLM calls for mask checks is spent; decide from the overlay")
        if any(done[i].verdict == "reject" for i in ids if i in done):
            text += ". Rejected masks leave the overlay and are not kept if selected."
        return text, memory.model_copy(update={"verdicts": verdicts, "checks": checks})

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

    def _context(self, view: PlannerView, image_note: str, rejected: set[int]) -> str:
        prev = view.previous
        previous = ""
        box = self.frame(view.image).box_from_original
        if prev is not None:
            chosen = view.by_id(prev.ids)
            listed = describe_candidates(chosen, view.image_area, box=box) if chosen else "none"
            previous = (f"Earlier in this conversation: question {prev.question!r}; answer "
                        f"{prev.answer!r}; selected masks (ids can be selected again): {listed}")
        cands = view.candidates()
        counts: dict[str, int] = {}
        for c in cands:
            counts[c.prompt] = counts.get(c.prompt, 0) + 1
        presence = view.state.presence
        tried = "; ".join(f"{p} (presence {v:.2f}, {counts.get(p, 0)} candidate(s))" for p, v in presence.items())
        live = [c for c in cands if c.id not in rejected]
        listed = describe_candidates(live, view.image_area, box=box) if live else "none" if cands else "none yet"
        out = [f"#{c.id}" for c in cands if c.id in rejected]
        if out:
            listed += f"; rejected by the per-mask check (not drawn, not kept if selected): {', '.join(out)}"
        return load_prompt("context", question=view.question, previous=previous, tried=tried or "none",
                           candidates=listed, rounds_used=view.round, rounds_allowed=1 + view.state.max_rounds,
                           images=image_note)

    def _messages(self, view: PlannerView, history: list[dict], images: list[np.ndarray], note: str,
                  rejected: set[int]) -> list[dict]:
        frame = self.frame(view.image)
        parts = [{"type": "image_url", "image_url": {"url": image_data_url(frame.shrink(im))}} for im in images]
        context = self._context(view, note, rejected)
        if not history:
            return [{"role": "system", "content": self._system(view)},
                    {"role": "user", "content": [{"type": "text", "text": context}, *parts]}]
        return [{"role": "system", "content": self._system(view)}, {"role": "user", "content": context},
                *history, {"role": "user", "content": [{"type": "text", "text": note}, *parts]}]

    @staticmethod
    def _drawn(cands: list[Candidate], rejected: set[int]) -> list[Candidate]:
        """The candidates the overlay draws: the latest segment round that found any not rejected. Masks of
        superseded prompts leave the picture (as in SAM 3 Agent) but stay listed and selectable by id;
        rejected masks leave it too."""
        live = [c for c in cands if c.id not in rejected]
        last = max((c.round for c in live), default=0)
        return [c for c in live if c.round == last]

    def _images(self, view: PlannerView, phase: Phase, rejected: set[int], *, announce: bool,
                changed: bool = False) -> tuple[list[np.ndarray], str]:
        """A step's images (at most two) and the note saying what they are: the image as it is, then the
        overlay of the latest prompt's candidates, else (planning a follow-up) of the previous answer's masks."""
        cands = view.candidates()
        if cands:
            drawn = self._drawn(cands, rejected)
            if not drawn:
                return [view.image], "The image is below; the per-mask check rejected every candidate (none drawn)."
            overlay = view.overlay(drawn)
            if changed and len(drawn) < len(cands):  # else the trace would not show what the model saw
                view.emit("overlay", f"sent to the model: {len(drawn)} of the {len(cands)} candidate(s)",
                          image=overlay, data={"ids": [c.id for c in drawn], "mllm": True})
            which, shown = "", {c.id for c in drawn}
            if any(c.id not in rejected and c.id not in shown for c in cands):
                which += (" of the latest prompt's candidates (earlier ones are listed, not drawn, and can still be "
                          "selected)")
            if any(c.id in rejected for c in cands):
                which += ", without the masks the per-mask check rejected"
            return [view.image, overlay], ("Two images below: the image as it is, then the current overlay" + which
                                           + " (candidate masks tinted, outlined and labelled by id).")
        previous = view.previous_candidates() if phase == "plan" else []
        if previous:
            overlay = view.overlay(previous)
            if announce:
                view.emit("overlay", "the previous answer's masks, labelled by id", image=overlay,
                          data={"ids": [c.id for c in previous]})
            return [view.image, overlay], ("Two images below: the image as it is, then the previous answer's masks "
                                           "(tinted, outlined and labelled by id).")
        return [view.image], "The image is below."

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
