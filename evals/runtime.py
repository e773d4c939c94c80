"""One process's means to answer cases: its segmenter, the agent on top of it, and a record's common fields.

``evals.worker`` (2D images) and ``evals.volumes`` (3D volumes) both build on this module.
"""

from __future__ import annotations

import os
import random
import threading
from typing import Any

import numpy as np

from evals.cases import EvalCase
from evals.config import EvalConfig
from evals.identity import record_identity, run_identity
from evals.modes import MeteredSegmenter
from segmenter.facade import Segmenter

AGENT_REBUILD_EVERY = 100  # questions; the agent's in-memory checkpointer and image store keep every thread
Task = tuple[str, EvalCase]


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def api_key(config: EvalConfig) -> str | None:
    """The MLLM key from the variable ``--api-key-env`` names (None: the agent reads OPENAI_API_KEY)."""
    if config.api_key_env is None:
        return None
    key = os.environ.get(config.api_key_env, "").strip()
    if not key:
        raise RuntimeError(f"--api-key-env {config.api_key_env}: that environment variable is not set here")
    return key


def build_agent(segmenter: Segmenter, config: EvalConfig):
    try:
        from agent import Agent  # type: ignore[attr-defined]
    except ImportError as exc:
        raise RuntimeError(
            f"agent mode needs the agent package's Agent class, which is not importable ({exc})"
        ) from exc
    options: dict[str, Any] = {"segmenter": segmenter}
    if config.planner is not None:
        options["planner"] = config.planner
    if config.max_rounds is not None:
        options["max_rounds"] = config.max_rounds
    if config.record is not None or config.replay is not None:
        options.update(record=config.record, replay=config.replay)
    # only what the run sets: an unset one keeps the environment's (Settings) value
    llm = {"model": config.model, "base_url": config.base_url, "api_key": api_key(config)}
    llm = {k: v for k, v in llm.items() if v is not None}
    if llm:
        options["llm_options"] = llm
    return Agent(**options)


class Runtime:
    """What one process needs to answer cases: the segmenter, and the agent on top of it when asked for.

    Safe to share between threads: the segmenter's lock makes each prompt's set-image-and-segment
    one step (``run_image`` works through a handle per image), and the agent runs each question
    in its own thread id.
    """

    def __init__(self, config: EvalConfig, segmenter: MeteredSegmenter | None = None) -> None:
        seed_everything(config.seed)
        self.config = config
        if segmenter is None:
            options: dict[str, Any] = {}
            if config.backend == "lite":
                options = {"weights": config.weights, "presence_threshold": config.presence_threshold,
                           "refine": config.refine}
            segmenter = MeteredSegmenter(config.backend, **options)
        self.segmenter = segmenter
        self.identity = run_identity(config)
        self._agent = None
        self._agent_questions = 0
        self._agent_lock = threading.Lock()

    @property
    def agent(self):
        """The agent on this process's segmenter, made fresh every ``AGENT_REBUILD_EVERY`` questions
        so its per-thread memory does not grow with the benchmark."""
        with self._agent_lock:
            if self._agent is None or self._agent_questions >= AGENT_REBUILD_EVERY:
                self._agent = build_agent(self.segmenter, self.config)
                self._agent_questions = 0
            self._agent_questions += 1
            return self._agent


def safe_name(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in key)


def base_record(runtime: Runtime, mode: str, case: EvalCase) -> dict[str, Any]:
    return {
        "mode": mode,
        "key": case.key,
        "id": case.id,
        "dataset": case.dataset,
        "concept": case.concept_label,
        "source": case.source,
        "question": case.question,
        "category": case.metadata.get("category"),  # reasoning sets: direct / synonym / lay / negative / ...
        "image": str(case.image),
        "error": None,
        "identity": record_identity(runtime.identity, mode),
    }
