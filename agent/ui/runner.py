"""Agents for the UI: one per planner configuration, sharing one segmenter per backend and one thread store.

A thread lives in the checkpointer, not in an Agent, so every Agent here shares one SQLite
checkpoint file: a follow-up turn continues its thread even after the user changes a setting.
The segmenter holds the current image's embedding, so turns must not interleave: ``run_lock``
serialises them across Agents (each Agent's own lock only covers itself).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from agent.ui.settings import UiSettings, key_for


class AgentPool:
    def __init__(self, checkpoint_db: Path, *, launch_base_url: str = "", host: str = "127.0.0.1") -> None:
        self.checkpoint_db = Path(checkpoint_db)
        self.launch_base_url = launch_base_url
        self.host = host
        self._agents: dict[tuple, Any] = {}
        self._segmenters: dict[str, Any] = {}
        self._build_lock = threading.Lock()
        self.run_lock = threading.Lock()

    def segmenter(self, backend: str) -> Any:
        from segmenter import Segmenter

        if backend not in self._segmenters:
            self._segmenters[backend] = Segmenter(backend)
        return self._segmenters[backend]

    def _llm_options(self, settings: UiSettings) -> dict[str, Any]:
        if not settings.base_url or not settings.model:
            raise ValueError("the OpenAI-compatible planner needs an endpoint base URL and a model name (see Settings)")
        key = key_for(settings.base_url, launch_base_url=self.launch_base_url, host=self.host)
        # "none", not None: OpenAIClient falls back to $OPENAI_API_KEY when given None
        return {"base_url": settings.base_url, "model": settings.model, "api_key": key or "none"}

    @staticmethod
    def _agent_key(settings: UiSettings) -> tuple:
        planner = (settings.planner,) if settings.planner == "offline" else (settings.planner, settings.base_url,
                                                                               settings.model)
        return (*planner, settings.backend, settings.max_rounds)

    def agent(self, settings: UiSettings) -> Any:
        key = self._agent_key(settings)
        with self._build_lock:
            if key not in self._agents:
                from agent import Agent

                options = self._llm_options(settings) if settings.planner == "openai" else None
                self._agents[key] = Agent(
                    planner=settings.planner, segmenter=self.segmenter(settings.backend),
                    max_rounds=settings.max_rounds, checkpoint_db=self.checkpoint_db, llm_options=options,
                )
            return self._agents[key]

    @staticmethod
    def apply_threshold(segmenter: Any, threshold: float) -> bool:
        """Set the backend's presence threshold for this turn; False where the backend has none.

        The Agent API takes no score threshold, so the UI sets the Lite backend's own (under
        ``run_lock``, since the backend is shared).
        """
        backend = getattr(segmenter, "backend", None)
        if backend is not None and hasattr(backend, "presence_threshold"):
            backend.presence_threshold = float(threshold)
            return True
        return False

    def forget(self, thread_id: str) -> None:
        """Drop a thread's checkpoints and masks (a new chat, a closed tab); a no-op before any turn ran."""
        with self._build_lock:
            agent = next(iter(self._agents.values()), None)
        if agent is None:
            return
        with self.run_lock:
            agent.checkpointer.delete_thread(thread_id)
            agent.store.delete_thread(thread_id)

    def stream(self, settings: UiSettings, question: str, image: np.ndarray, thread_id: str) -> Iterator[Any]:
        """The agent's step events for one turn, with the shared segmenter held for the whole turn."""
        agent = self.agent(settings)
        with self.run_lock:
            self.apply_threshold(agent.segmenter, settings.score_threshold)
            yield from agent.stream(question, image=image, thread_id=thread_id)
