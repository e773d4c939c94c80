"""`Agent`: the public entry point. ``Agent().run("find the polyps", image="x.jpg")``.

One Agent holds a segmenter, a planner, the compiled graph and a checkpointer (in memory, or a
SQLite file with ``checkpoint_db=``, which also holds the masks so a thread survives the process).
Turns of one thread run one at a time; turns of different threads run at once (the Segmenter
makes each run's set-image-then-segment one step, so they share it safely).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
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
                  coordinate_convention: str | None = None, **llm_options: Any) -> Planner:
    """A planner from a name ("auto", "offline", "openai"), a chat client, or a Planner.

    "auto" follows ``Settings.planner_for`` (base URL or model given, in ``llm_options`` or ``settings``).
    ``coordinate_convention`` (else ``settings.medsam3_coordinates``) is how an MLLM's boxes read.
    """
    if isinstance(planner, Planner):
        return planner
    from agent.mllm.base import ChatClient

    settings = settings if settings is not None else Settings()
    coordinates = coordinate_convention or settings.medsam3_coordinates
    if isinstance(planner, ChatClient):
        from agent.planners.mllm import MLLMPlanner

        return MLLMPlanner(planner, coordinate_convention=coordinates)
    if isinstance(planner, str):
        planner = settings.planner_for(planner, base_url=llm_options.get("base_url"), model=llm_options.get("model"))
    if planner == "offline":
        from agent.planners.offline import OfflinePlanner

        return OfflinePlanner()
    if planner == "openai":
        from agent.mllm.openai_client import OpenAIClient
        from agent.planners.mllm import MLLMPlanner

        return MLLMPlanner(OpenAIClient.from_env(settings, **llm_options), coordinate_convention=coordinates)
    raise ValueError(f"unknown planner {planner!r}; choose offline, openai, or pass a Planner / chat client")


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
    ) -> None:
        """``settings``: the environment's endpoint, model and key (read now when not given).
        ``coordinate_convention``: how the MLLM planner reads boxes ("pixels", "norm1000"; default "auto":
        by model family, or ``MEDSAM3_COORDINATES``)."""
        if not isinstance(max_rounds, int) or max_rounds < 0:
            raise ValueError(f"max_rounds must be a whole number >= 0, got {max_rounds!r}")
        self.max_rounds = max_rounds
        self.planner = build_planner(planner, settings, coordinate_convention=coordinate_convention,
                                     **(llm_options or {}))
        self.segmenter = _build_segmenter(segmenter, segmenter_options or {})
        self.checkpoint_db = Path(checkpoint_db) if checkpoint_db else None
        if self.checkpoint_db is not None:
            from langgraph.checkpoint.sqlite import SqliteSaver

            self.checkpoint_db.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.checkpoint_db), check_same_thread=False)
            # a deleted thread's rows are zeroed, not left in free pages
            self._conn.execute("PRAGMA secure_delete = ON")
            self.checkpointer: BaseCheckpointSaver = SqliteSaver(self._conn)
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
        result = None
        for event in self.stream(question, image=image, thread_id=thread_id, slices=slices):
            if event.kind == "answer" and event.result is not None:
                result = event.result
        if result is None:  # stream always ends with the answer or raises; this guards the contract
            raise RuntimeError("the agent finished without a result")
        return result

    def stream(self, question: str, image: ImageInput | Study | None = None,
               thread_id: str | None = None, *, slices: str | range | None = None) -> Iterator[StepEvent]:
        """Step events as they happen; the last has kind "answer" and the run's ``result``."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question is empty")
        question = question.strip()
        if len(question) > 4000:
            raise ValueError(f"question is {len(question)} characters long; the limit is 4000")
        study = as_study(image)  # DICOM and NIfTI paths are read by load_study, keeping their geometry
        if study is not None and study.is_volume:  # answered per volume, in one run
            if thread_id is not None:
                raise ValueError("a volume is answered in one run: follow-up questions (thread_id) take 2D images")
            yield from stream_volume(self, question, study, slices=slices)
            return
        image = study if study is not None else image
        if slices is not None:
            raise ValueError("slices= applies to a volume (a DICOM series, zip or NIfTI volume); the image is 2D")
        if thread_id is None:  # a one-off run: a fresh thread nobody else can reach
            yield from self._stream(question, image, thread_id)
            return
        with self._lock.hold(thread_id):
            yield from self._stream(question, image, thread_id)

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

    def _stream(self, question: str, image: ImageInput | Study | None,
                thread_id: str | None) -> Iterator[StepEvent]:
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
        trace: list[StepEvent] = []
        final: dict[str, Any] = {}
        ctx = RunContext(segmenter=segmenter, image=array, planner=self.planner, masks=ThreadMasks(self.store, thread),
                         geometry=geometry)
        try:
            for mode, chunk in self.graph.stream(state, config, context=ctx, stream_mode=["custom", "values"]):
                if mode == "custom" and isinstance(chunk, StepEvent):
                    trace.append(chunk)
                    yield chunk
                elif mode == "values":
                    final = chunk
            result = self._result(final, array, ctx, trace, thread_id)
        except Exception as exc:
            event = StepEvent(kind="error", text=f"{type(exc).__name__}: {exc}", node="agent")
            trace.append(event)
            if isinstance(exc, AgentError) and exc.partial is None:  # keep what ran before the failure
                exc.partial = self._result(final, array, ctx, trace, thread_id, error=exc)
            yield event
            raise
        finally:
            if thread_id is None:  # a one-off run: nothing will continue it
                self.checkpointer.delete_thread(thread)
                self.store.delete_thread(thread)
        done = StepEvent(kind="answer", text=result.answer, node="answer", image=result.overlay, result=result,
                         data={"ids": list(final.get("selection", []))}, ms=final.get("answer_ms", 0.0))
        result.trace.append(done)
        yield done

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
