"""`Agent`: the public entry point. ``Agent().run("find the polyps", image="x.jpg")``.

One Agent holds a segmenter, a planner, the compiled graph and a checkpointer (in memory, or a
SQLite file with ``checkpoint_db=``, which also holds the masks so a thread survives the process).
Turns of one thread run one at a time; turns of different threads run at once (the Segmenter
makes each run's set-image-then-segment one step, so they share it safely).
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from typing_extensions import Self

from agent.config import Settings
from agent.errors import AgentError
from agent.graph import build_graph, recursion_limit
from agent.locks import KeyedLocks
from agent.planners.base import Planner, RunContext, ThreadMasks
from agent.results import AgentResult, ConceptMask, StepEvent
from agent.state import AgentState, turn_input, update
from agent.store import MaskStore, MemoryMaskStore, SqliteMaskStore
from agent.volume import as_study, stream_volume
from segmenter.base import SegmenterBackend, image_key
from segmenter.facade import Segmenter
from segmenter.image_io import ImageInput
from segmenter.overlay import render_overlay
from segmenter.study import Geometry, Study
from segmenter.study_io import load_image
from segmenter.types import Box, Instance

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver


def build_planner(planner: Any = "auto", settings: Settings | None = None, *,
                  coordinate_convention: str | None = None, replay: str | Path | None = None,
                  **llm_options: Any) -> Planner:
    """A planner from a name ("auto", "offline", "openai", "replay"), a chat client, or a Planner.

    "auto" follows ``Settings.planner_for`` (base URL or model given, in ``llm_options`` or ``settings``).
    ``coordinate_convention`` (else ``settings.medsam3_coordinates``) is how an MLLM's boxes read.
    "replay" answers from the recording folder ``replay`` (``agent.mllm.recording``), with its model and
    coordinate convention, and no network.
    """
    if replay is not None:
        planner = "replay" if planner == "auto" else planner
        if planner != "replay":
            raise ValueError(f"replay= answers from a recording: it goes with planner='replay', not {planner!r}")
    if isinstance(planner, Planner):
        return planner
    from agent.mllm.base import ChatClient

    settings = settings if settings is not None else Settings()
    coordinates = coordinate_convention or settings.medsam3_coordinates
    if isinstance(planner, ChatClient):
        from agent.planners.mllm import MLLMPlanner

        return MLLMPlanner(planner, coordinate_convention=coordinates, check_budget=settings.medsam3_check_budget)
    if isinstance(planner, str):
        planner = settings.planner_for(planner, base_url=llm_options.get("base_url"), model=llm_options.get("model"))
    if planner == "replay":
        return _replay_planner(replay, coordinate_convention, llm_options, settings.medsam3_check_budget)
    if planner == "offline":
        from agent.planners.offline import OfflinePlanner

        return OfflinePlanner()
    if planner == "openai":
        from agent.mllm.openai_client import OpenAIClient
        from agent.planners.mllm import MLLMPlanner

        return MLLMPlanner(OpenAIClient.from_env(settings, **llm_options), coordinate_convention=coordinates,
                           check_budget=settings.medsam3_check_budget)
    raise ValueError(f"unknown planner {planner!r}; choose offline, openai, or pass a Planner / chat client")


@dataclass
class _Turn:
    """One 2D turn on its way through the graph: what ``stream`` and ``astream`` share."""

    thread: str
    thread_id: str | None  # the caller's (None: a one-off run on the fresh ``thread``)
    config: dict[str, Any]
    state: dict[str, Any]
    ctx: RunContext
    array: np.ndarray
    source: Study | None = None  # a one-slice DICOM/NIfTI: geometry and headers for the result's exports
    trace: list[StepEvent] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)  # the graph's last streamed state

    def take(self, mode: str, chunk: Any) -> StepEvent | None:
        """Keep a streamed chunk: a step event (returned, to pass on) or the graph's state."""
        if mode == "custom" and isinstance(chunk, StepEvent):
            self.trace.append(chunk)
            return chunk
        if mode == "values":
            self.final = chunk
        return None


def _final_result(answers: list[StepEvent]) -> AgentResult:
    result = next((e.result for e in answers if e.result is not None), None)
    if result is None:  # a stream always ends with the answer or raises; this guards the contract
        raise RuntimeError("the agent finished without a result")
    return result


async def _in_thread(events: Iterator[StepEvent]) -> AsyncIterator[StepEvent]:
    """A sync event stream stepped in worker threads (the event loop goes on between events)."""
    done = object()
    try:
        while (event := await asyncio.to_thread(next, events, done)) is not done:
            yield event  # type: ignore[misc]  # not the sentinel
    finally:
        close = getattr(events, "close", None)
        if close is not None:  # a consumer that stops early: the generator's own clean-up runs
            await asyncio.to_thread(close)


def _replay_planner(folder: str | Path | None, coordinate_convention: str | None,
                    llm_options: dict[str, Any], check_budget: int) -> Planner:
    """The MLLM planner answering from a recording, with the recorded model and coordinate convention."""
    from agent.mllm.recording import ReplayClient
    from agent.planners.mllm import MLLMPlanner

    if folder is None:
        raise ValueError("planner='replay' needs replay=<a recording folder> (made with record=)")
    if llm_options:
        raise ValueError(f"a replay takes its model and settings from the recording, not {sorted(llm_options)}")
    client = ReplayClient(folder)
    return MLLMPlanner(client, coordinate_convention=coordinate_convention
                       or client.recording.meta.coordinate_convention or "auto", check_budget=check_budget)


def _record(planner: Planner, folder: str | Path) -> None:
    """Write the MLLM planner's exchanges to ``folder`` (``agent.mllm.recording``)."""
    from agent.mllm.openai_client import OpenAIClient
    from agent.mllm.recording import Recorder, ReplayClient
    from agent.planners.mllm import MLLMPlanner

    client = getattr(planner, "client", None)
    if not isinstance(planner, MLLMPlanner) or not isinstance(client, OpenAIClient):
        raise ValueError(f"record= writes an OpenAI-compatible MLLM planner's requests; the {planner.label} "
                         "planner sends none")
    if isinstance(client, ReplayClient):
        raise ValueError("a replay is not recorded again: it sends nothing (its recording is the record)")
    Recorder.attach(client, folder, coordinate_convention=planner.coordinate_convention)


def _build_segmenter(segmenter: Any, options: dict[str, Any]) -> Segmenter:
    if isinstance(segmenter, Segmenter):
        return segmenter
    if isinstance(segmenter, (str, SegmenterBackend)):
        return Segmenter(segmenter, **options)
    raise ValueError(f"segmenter must be a backend name, a Segmenter or a SegmenterBackend, got {type(segmenter)}")


class Agent:
    def __init__(
        self,
        planner: Any = "auto",
        segmenter: Any = "lite",
        *,
        max_rounds: int = 3,
        checkpoint_db: str | Path | None = None,
        llm_options: dict[str, Any] | None = None,
        segmenter_options: dict[str, Any] | None = None,
        settings: Settings | None = None,
        coordinate_convention: str | None = None,
        record: str | Path | None = None,
        replay: str | Path | None = None,
    ) -> None:
        """``settings``: the environment's endpoint, model and key (read now when not given).
        ``coordinate_convention``: how the MLLM planner reads boxes ("pixels", "norm1000"; default "auto":
        by model family, or ``MEDSAM3_COORDINATES``).
        ``record``: a folder where every MLLM request and reply is written (images included: patient pixels);
        ``planner="replay", replay=<that folder>`` answers the same questions from it without a network."""
        if not isinstance(max_rounds, int) or max_rounds < 0:
            raise ValueError(f"max_rounds must be a whole number >= 0, got {max_rounds!r}")
        self.max_rounds = max_rounds
        self.planner = build_planner(planner, settings, coordinate_convention=coordinate_convention, replay=replay,
                                     **(llm_options or {}))
        if record is not None:
            _record(self.planner, record)
        self.segmenter = _build_segmenter(segmenter, segmenter_options or {})
        self.checkpoint_db = Path(checkpoint_db) if checkpoint_db else None
        if self.checkpoint_db is not None:
            from agent.checkpoints import ThreadedSqliteSaver

            self.checkpoint_db.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.checkpoint_db), check_same_thread=False)
            # a deleted thread's rows are zeroed, not left in free pages
            self._conn.execute("PRAGMA secure_delete = ON")
            self.checkpointer: BaseCheckpointSaver = ThreadedSqliteSaver(self._conn)  # async methods too (arun)
            self.store: MaskStore = SqliteMaskStore(self.checkpoint_db)
        else:
            from langgraph.checkpoint.memory import InMemorySaver

            self.checkpointer = InMemorySaver()
            self.store = MemoryMaskStore()
        self.graph = build_graph(self.checkpointer)
        self._lock = KeyedLocks()  # per thread id: one thread's turns never interleave

    # --- public API ------------------------------------------------------------------------------
    def run(self, question: str, image: ImageInput | Study | None = None,
            thread_id: str | None = None, *, slices: str | range | None = None) -> AgentResult:
        """Answer ``question`` about ``image`` (a path, array, PIL image, or a one-slice ``Study``, whose
        pixel spacing turns measurements into millimetres) with masks.

        With ``thread_id``, the question continues that conversation ("now only the largest one");
        the image may then be left out to reuse the thread's image.
        A multi-slice ``Study`` (or a DICOM series folder, zip or NIfTI volume path) is answered per
        volume (``agent.volume``): ``slices`` ("40:80" or a range) restricts the slices segmented.
        """
        events = self.stream(question, image=image, thread_id=thread_id, slices=slices)
        return _final_result([e for e in events if e.kind == "answer"])

    async def arun(self, question: str, image: ImageInput | Study | None = None,
                   thread_id: str | None = None, *, slices: str | range | None = None) -> AgentResult:
        """``run`` for asyncio: the same result and errors, on LangGraph's async API (``astream``)."""
        events = self.astream(question, image=image, thread_id=thread_id, slices=slices)
        return _final_result([e async for e in events if e.kind == "answer"])

    def stream(self, question: str, image: ImageInput | Study | None = None,
               thread_id: str | None = None, *, slices: str | range | None = None) -> Iterator[StepEvent]:
        """Step events as they happen; the last has kind "answer" and the run's ``result``."""
        question, volume, image = self._inputs(question, image, thread_id, slices)
        if volume is not None:  # answered per volume, in one run
            yield from stream_volume(self, question, volume, slices=slices)
            return
        if thread_id is None:  # a one-off run: a fresh thread nobody else can reach
            yield from self._stream(question, image, thread_id)
            return
        with self._lock.hold(thread_id):
            yield from self._stream(question, image, thread_id)

    async def astream(self, question: str, image: ImageInput | Study | None = None,
                      thread_id: str | None = None, *, slices: str | range | None = None,
                      ) -> AsyncIterator[StepEvent]:
        """``stream`` for asyncio: the same events in the same order, and the same errors. The graph runs on
        LangGraph's ``astream``; its nodes (segmenter, MLLM requests) and the image reading run in worker
        threads, so the event loop is never blocked. A volume's slice loop runs in a worker thread too."""
        question, volume, image = await asyncio.to_thread(self._inputs, question, image, thread_id, slices)
        if volume is not None:
            async for event in _in_thread(stream_volume(self, question, volume, slices=slices)):
                yield event
            return
        hold = await self._ahold(thread_id)  # one thread's turns never interleave, sync or async
        try:
            async for event in self._astream(question, image, thread_id):
                yield event
        finally:
            hold.__exit__(None, None, None)

    def forget(self, thread_id: str) -> None:
        """Delete a thread: its checkpoints, its masks, and its image unless another thread uses it."""
        with self._lock.hold(thread_id):
            self.checkpointer.delete_thread(thread_id)
            self.store.delete_thread(thread_id)

    def thread_state(self, thread_id: str) -> dict[str, Any]:
        """The checkpointed state of a thread (ids and text only), empty when the thread is unknown."""
        snapshot = self.graph.get_state({"configurable": {"thread_id": thread_id}})
        return dict(snapshot.values or {})

    def close(self) -> None:
        """Close the SQLite checkpoint file (if any); the Agent cannot run afterwards."""
        if self.checkpoint_db is not None:
            self._conn.close()
            self.store.close()  # type: ignore[attr-defined]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------------------
    def _image_for(self, image: ImageInput | Study | None, prior: dict[str, Any],
                   thread: str) -> tuple[np.ndarray, Geometry]:
        """The turn's pixels and geometry: the given image, else the thread's stored copy.

        The checkpoint names the image only by its content hash (``store:<key>``), never by its
        path: a file name or folder often identifies the patient.
        """
        if isinstance(image, Study):
            if image.is_volume:
                raise ValueError(f"the study has {image.shape[0]} slices; Agent.run takes one slice for now "
                                 "(pick one: Study.from_rgb(study.slices[i], study.geometry))")
            return np.ascontiguousarray(image.slices[0]), image.geometry
        if image is not None:
            return load_image(image), Geometry()
        ref = prior.get("image_ref") or ""
        if not ref:
            raise ValueError("no image: pass image= (a path, numpy array or PIL image)"
                             + (f"; thread {thread!r} has none stored" if prior else ""))
        stored = self.store.get_image(ref.removeprefix("store:")) if ref.startswith("store:") else None
        if stored is None:
            raise ValueError(f"thread {thread!r}: its image is no longer stored; pass image= again")
        return stored, Geometry.model_validate(prior.get("geometry") or {})

    async def _ahold(self, thread_id: str | None) -> AbstractContextManager:
        """The thread's turn lock, waited for in a worker thread. A caller cancelled while waiting leaves no
        lock behind: a lock taken after the wait was given up is handed straight back (explicitly, not left
        to the garbage collector closing the abandoned context manager)."""
        hold: AbstractContextManager = self._lock.hold(thread_id) if thread_id is not None else nullcontext()
        entering = asyncio.ensure_future(asyncio.to_thread(hold.__enter__))
        try:
            await asyncio.shield(entering)
        except asyncio.CancelledError:
            entering.add_done_callback(lambda _: hold.__exit__(None, None, None))
            raise
        return hold

    def _inputs(self, question: str, image: ImageInput | Study | None, thread_id: str | None,
                slices: str | range | None) -> tuple[str, Study | None, ImageInput | Study | None]:
        """The checked question and, read once, either the volume to answer per volume or the 2D image."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question is empty")
        question = question.strip()
        if len(question) > 4000:
            raise ValueError(f"question is {len(question)} characters long; the limit is 4000")
        study = as_study(image)  # DICOM and NIfTI paths are read by load_study, keeping their geometry
        if study is not None and study.is_volume:
            if thread_id is not None:
                raise ValueError("a volume is answered in one run: follow-up questions (thread_id) take 2D images")
            return question, study, None
        if slices is not None:
            raise ValueError("slices= applies to a volume (a DICOM series, zip or NIfTI volume); the image is 2D")
        return question, None, study if study is not None else image

    def _turn(self, question: str, image: ImageInput | Study | None, thread_id: str | None) -> _Turn:
        """A 2D turn ready for the graph: its image stored and encoded, its input state and run context."""
        thread = thread_id or f"run-{uuid.uuid4().hex}"
        config = {"configurable": {"thread_id": thread},
                  "recursion_limit": recursion_limit(self.max_rounds, self.planner.max_steps)}
        prior = self.thread_state(thread) if thread_id else {}
        array, geometry = self._image_for(image, prior, thread)
        key = image_key(array)
        ref = f"store:{key}"
        self.store.put_image(key, array, thread_id=thread)  # kept while a thread uses it
        if prior and prior.get("image_key") != key:
            prior = {}  # a new image starts the conversation afresh: old mask ids mean nothing on it
        # this run's handle on the shared segmenter: the embedding is computed once here and reused by every
        # prompt, even when other threads' runs set their images in between
        segmenter = self.segmenter.handle(array, geometry=geometry)  # its affine orients 'left X'/'right X'
        state = turn_input(
            question, turn=int(prior.get("turn", 0)) + 1, max_rounds=self.max_rounds, planner=self.planner.label,
            image_ref=ref, image_key=key, image_size=list(array.shape[:2]), previous=prior.get("previous"),
            keep_candidates=list(prior.get("candidates", [])), next_id=int(prior.get("next_id", 1)),
        )
        state.update(update(geometry=geometry))  # spacing and modality only: a follow-up measures in the same units
        ctx = RunContext(segmenter=segmenter, image=array, planner=self.planner, masks=ThreadMasks(self.store, thread),
                         geometry=geometry)
        source = image if isinstance(image, Study) else None  # a follow-up without image= has no headers: PNGs only
        return _Turn(thread=thread, thread_id=thread_id, config=config, state=state, ctx=ctx, array=array,
                     source=source)

    def _stream(self, question: str, image: ImageInput | Study | None,
                thread_id: str | None) -> Iterator[StepEvent]:
        turn = self._turn(question, image, thread_id)
        try:
            chunks = self.graph.stream(turn.state, turn.config, context=turn.ctx, stream_mode=["custom", "values"])
            yield from filter(None, (turn.take(mode, chunk) for mode, chunk in chunks))
            done = self._answered(turn)
        except Exception as exc:
            yield self._failed(turn, exc)
            raise
        finally:
            self._end(turn)
        yield done

    async def _astream(self, question: str, image: ImageInput | Study | None,
                       thread_id: str | None) -> AsyncIterator[StepEvent]:
        turn = await asyncio.to_thread(self._turn, question, image, thread_id)  # reads and encodes the image
        try:
            async for mode, chunk in self.graph.astream(turn.state, turn.config, context=turn.ctx,
                                                        stream_mode=["custom", "values"]):
                event = turn.take(mode, chunk)
                if event is not None:
                    yield event
            answered = self._answered(turn)
        except Exception as exc:
            yield self._failed(turn, exc)
            raise
        finally:
            await asyncio.to_thread(self._end, turn)
        yield answered

    def _answered(self, turn: _Turn) -> StepEvent:
        """The "answer" event: the result made from the graph's last state."""
        result = self._result(turn.final, turn.array, turn.ctx, turn.trace, turn.thread_id)
        result.source = turn.source  # never serialised: ``save`` writes the NIfTI/SEG from it
        final = turn.final
        done = StepEvent(kind="answer", text=result.answer, node="answer", image=result.overlay, result=result,
                         data={"ids": list(final.get("selection", []))}, ms=final.get("answer_ms", 0.0))
        result.trace.append(done)
        return done

    def _failed(self, turn: _Turn, exc: Exception) -> StepEvent:
        """The "error" event of a failed turn; an ``AgentError`` keeps what ran before it in ``partial``."""
        event = StepEvent(kind="error", text=f"{type(exc).__name__}: {exc}", node="agent")
        turn.trace.append(event)
        if isinstance(exc, AgentError) and exc.partial is None:  # keep what ran before the failure
            exc.partial = self._result(turn.final, turn.array, turn.ctx, turn.trace, turn.thread_id, error=exc)
        return event

    def _end(self, turn: _Turn) -> None:
        if turn.thread_id is None:  # a one-off run: nothing will continue it
            self.checkpointer.delete_thread(turn.thread)
            self.store.delete_thread(turn.thread)

    def _result(self, final: dict[str, Any], image: np.ndarray, ctx: RunContext, trace: list[StepEvent],
                thread_id: str | None, error: AgentError | None = None) -> AgentResult:
        state = AgentState.model_validate(final)  # the last state the graph streamed (plain values)
        if error is not None:  # a failed run: its trace (tool results included), no answer and no masks
            return AgentResult(
                question=state.question, answer="", planner=self.planner.label,
                concepts_tried=state.concepts_tried, masks=[], image_size=image.shape[:2],
                overlay=image, trace=list(trace), thread_id=thread_id, rounds=state.round,
                status="error", error=str(error),
            )
        if state.status != "done":
            raise RuntimeError("the agent's graph stopped before answering")
        groups: dict[str, list[Instance]] = {}
        for cand in state.by_id(state.selection):
            mask = ctx.masks.get(cand.id)  # the candidate's mask, from the mask store
            if not mask.any():
                continue
            groups.setdefault(cand.concept, []).append(
                Instance(mask=mask, score=cand.score, box=Box.from_list(cand.box), area=int(mask.sum()))
            )
        h, w = image.shape[:2]
        masks = [ConceptMask(concept=c, instances=insts, image_size=(h, w)) for c, insts in groups.items()]
        chosen = set(state.selection)
        measurements = [m for m in state.measurements if m.ids and set(m.ids) <= chosen]  # of the answer's masks
        ordered = [inst.mask for m in masks for inst in m.instances]
        overlay = render_overlay(image, ordered, [str(n) for n in range(1, len(ordered) + 1)])
        return AgentResult(
            question=state.question, answer=state.answer, planner=self.planner.label,
            concepts_tried=state.concepts_tried, masks=masks, image_size=(h, w), overlay=overlay,
            trace=list(trace), thread_id=thread_id, rounds=state.round, measurements=measurements,
        )
