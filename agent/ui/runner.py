"""Agents for the UI: one per planner configuration, sharing one segmenter per backend and one thread store.

A thread lives in the checkpointer, not in an Agent, so every Agent here shares one SQLite
checkpoint file: a follow-up turn continues its thread even after the user changes a setting.
Turns of different threads run at once: a slow MLLM call holds up only its own thread. The
shared Segmenter serialises its set-image-then-segment steps itself, and ``_threads`` keeps one
thread's turns (and its deletion) from interleaving, whichever Agent runs them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from agent.locks import KeyedLocks
from agent.ui.settings import UiSettings, key_for
from segmenter.study import Study


class AgentPool:
    def __init__(self, checkpoint_db: Path, *, launch_base_url: str = "", host: str = "127.0.0.1",
                 api_key: str | None = None, segmenters: dict[str, Any] | None = None) -> None:
        """``segmenters``: already loaded Segmenters by backend name (a test's shared one), else built on use."""
        self.checkpoint_db = Path(checkpoint_db)
        self.launch_base_url = launch_base_url
        self.host = host
        self._api_key = api_key  # the operator's, read at launch; ``key_for`` decides where it may go
        self._agents: dict[tuple, Any] = {}
        self._segmenters: dict[str, Any] = dict(segmenters or {})
        self._build_lock = threading.Lock()
        self._threads = KeyedLocks()

    def segmenter(self, backend: str) -> Any:
        from segmenter import Segmenter

        with self._build_lock:
            if backend not in self._segmenters:
                self._segmenters[backend] = Segmenter(backend)
            return self._segmenters[backend]

    def _llm_options(self, settings: UiSettings) -> dict[str, Any]:
        if not settings.base_url or not settings.model:
            raise ValueError("the OpenAI-compatible planner needs an endpoint base URL and a model name (see Settings)")
        key = key_for(settings.base_url, self._api_key, launch_base_url=self.launch_base_url, host=self.host)
        # "none" for "no key": vLLM / Ollama need none, and the launch key must not go where key_for said no
        return {"base_url": settings.base_url, "model": settings.model, "api_key": key or "none",
                "timeout": settings.timeout, "max_retries": settings.retries}

    @staticmethod
    def _agent_key(settings: UiSettings) -> tuple:
        planner = (settings.planner,) if settings.planner == "offline" else (
            settings.planner, settings.base_url, settings.model, settings.timeout, settings.retries)
        return (*planner, settings.backend, settings.max_rounds, settings.score_threshold)

    def agent(self, settings: UiSettings) -> Any:
        """The Agent for these settings; its segmenter is a handle on the backend's shared one, with the
        turn's score threshold as the presence threshold (the Agent API takes none): None leaves each
        concept's calibrated threshold in force, a number gates every concept at it."""
        key = self._agent_key(settings)
        shared = self.segmenter(settings.backend)
        with self._build_lock:
            if key not in self._agents:
                from agent import Agent

                options = self._llm_options(settings) if settings.planner == "openai" else None
                self._agents[key] = Agent(
                    planner=settings.planner, segmenter=shared.handle(presence_threshold=settings.score_threshold),
                    max_rounds=settings.max_rounds, checkpoint_db=self.checkpoint_db, llm_options=options,
                )
            return self._agents[key]

    def forget(self, thread_id: str, *, wait: float = 120.0) -> bool:
        """Drop a thread's checkpoints, masks and image (a new chat, a closed tab); a no-op before any turn ran.

        While a turn of the thread runs, the deletion waits for it in the background (up to ``wait``
        seconds, then deletes anyway, so an abandoned turn cannot keep the data) and this returns False
        at once: the New chat button never waits for a slow MLLM call.
        """
        with self._build_lock:
            agent = next(iter(self._agents.values()), None)
        if agent is None:
            return True
        if self._threads.busy(thread_id):
            threading.Thread(target=self._delete, args=(agent, thread_id, wait), daemon=True).start()
            return False
        self._delete(agent, thread_id, wait)
        return True

    def _delete(self, agent: Any, thread_id: str, wait: float) -> None:
        with self._threads.hold(thread_id, timeout=wait):
            # every Agent here shares the checkpoint file and its tables (Agent.forget would wait without a limit)
            agent.checkpointer.delete_thread(thread_id)
            agent.store.delete_thread(thread_id)

    def stream(self, settings: UiSettings, question: str, image: np.ndarray | Study,
               thread_id: str) -> Iterator[Any]:
        """The agent's step events for one turn; other threads' turns run meanwhile.

        A volume is answered in one run (the agent keeps no thread for it): each question on it is a new
        run, still one at a time within the chat."""
        agent = self.agent(settings)
        volume = isinstance(image, Study) and image.is_volume
        with self._threads.hold(thread_id):
            yield from agent.stream(question, image=image, thread_id=None if volume else thread_id)
