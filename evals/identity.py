"""What a benchmark run's numbers mean: its identity, and the refusal to mix two identities in one table.

The identity is the segmenter (backend, weights and their sha256 for lite; for ``remote``, what the
``serve-segmenter`` server says it serves; presence threshold, box settings)
and, for agent mode, the planner (name, model, endpoint host, rounds, and the sha256 of every file
in ``prompts/``; for a replay, the recorded model and the recording's sha256 instead of an endpoint).
It goes into ``run.json``, ``summary.json`` and, in compact form, into every record of ``results.jsonl``;
a resume whose identity differs from any record already there is refused with the settings that differ.
No key is part of it: the endpoint is its host (and port) alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from evals.config import EvalConfig
from segmenter.lite.runtime import file_sha256  # the weights' hash, the one their parts' cache is keyed by

SEGMENTER_KEYS = ("backend", "weights_sha256", "experts", "served", "presence_threshold", "refine", "shift",
                  "box_strategy", "box_text", "slices")
AGENT_KEYS = ("planner", "model", "endpoint", "max_rounds", "prompts_sha256", "recording_sha256")
OPENAI_HOST = "api.openai.com"


def prompt_hashes() -> dict[str, str]:
    """sha256 of every prompt text the agent loads (``prompts/*.txt``), by file name."""
    folder = resources.files("prompts")
    return {entry.name: hashlib.sha256(entry.read_bytes()).hexdigest()
            for entry in sorted(folder.iterdir(), key=lambda e: e.name) if entry.name.endswith(".txt")}


def endpoint_host(base_url: str | None) -> str:
    """host[:port] of an endpoint URL: no scheme, path, query or user info (which may hold a key)."""
    if not base_url:
        return OPENAI_HOST
    parts = urlsplit(base_url if "//" in base_url else f"//{base_url}")
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or "?"
    return f"{host}:{port}" if port else host


def agent_identity(config: EvalConfig) -> dict[str, Any]:
    from agent.config import Settings

    settings = Settings()
    planner = settings.planner_for(config.planner or "auto", base_url=config.base_url, model=config.model)
    mllm = planner == "openai"
    prompts = prompt_hashes()
    identity = {
        "planner": planner,
        "model": (config.model or settings.openai_model or None) if mllm else None,
        "endpoint": endpoint_host(config.base_url or settings.openai_base_url) if mllm else None,
        "max_rounds": config.max_rounds,
        "prompts_sha256": hashlib.sha256("".join(f"{k}:{v}\n" for k, v in prompts.items()).encode()).hexdigest(),
        "prompts": prompts,
        "recording_sha256": None,
    }
    if config.record is not None and planner != "openai":
        raise ValueError(f"--record writes the openai planner's requests; this run's planner is {planner} "
                         "(give --model, or set OPENAI_MODEL)")
    if planner == "replay" and config.replay is not None:
        from agent.mllm.recording import Recording

        recording = Recording(config.replay)  # a missing or changed recording stops the run here
        identity.update(model=recording.meta.model, recording_sha256=recording.sha256())
    return identity


def served_segmenter() -> dict[str, Any]:
    """What the ``remote`` backend's server (``MEDSAM3_SEGMENTER_URL``) serves: its backend, model and LoRA."""
    from segmenter.service.client import RemoteBackend

    info = RemoteBackend().info()
    return {"backend": str(info.get("backend", "")).removeprefix("remote:"), "model": info.get("model"),
            "lora": info.get("lora"),
            "server": endpoint_host(str(info.get("url")))}


def refine_identity(refine: str | None) -> str | None:
    """The lite refine setting; for ``catalog``, the concepts it redraws (so a changed catalog is a changed run)."""
    if refine != "catalog":
        return refine
    from segmenter.catalog import load_catalog

    drawn = [f"{c.name}={c.refine}" for c in load_catalog().concepts if c.refine != "none"]
    return f"catalog({','.join(drawn)})"


def presence_identity(config: EvalConfig) -> float | str | None:
    """The presence threshold given, else for lite the calibrated per-concept thresholds (their hash)."""
    if config.presence_threshold is not None or config.backend != "lite":
        return config.presence_threshold
    from segmenter.lite.backend import default_weights_path
    from segmenter.lite.thresholds import thresholds_identity

    return thresholds_identity(config.weights or default_weights_path())


def expert_hashes(weights: Path) -> dict[str, str] | None:
    """sha256 of each catalog expert's weights found beside the main ``weights`` (segmenter/lite/backend.py);
    None where there is none."""
    from segmenter.catalog import load_catalog
    from segmenter.lite.backend import expert_weights_path

    names = sorted({name for c in load_catalog().concepts for name in c.experts})
    paths = {name: expert_weights_path(weights, name) for name in names}
    return {name: file_sha256(path) for name, path in paths.items() if path.is_file()} or None


def run_identity(config: EvalConfig) -> dict[str, Any]:
    """The run's full identity (``run.json``, ``summary.json``); agent keys are None without agent mode."""
    weights_sha = experts = None
    if config.backend == "lite":
        from segmenter.lite.backend import default_weights_path

        path = Path(config.weights or default_weights_path())
        weights_sha = file_sha256(path) if path.is_file() else None
        experts = expert_hashes(path)
    identity: dict[str, Any] = {
        "backend": config.backend,
        "weights": str(config.weights) if config.weights else "shipped",
        "weights_sha256": weights_sha,
        "experts": experts,  # the catalog experts' weights beside the main ones, by name
        "served": served_segmenter() if config.backend == "remote" else None,
        "presence_threshold": presence_identity(config),
        "refine": refine_identity(config.refine),
        "shift": config.shift,  # the simulated site (evals/shift.py); None: the images as read
        "box_strategy": config.box_strategy,
        "box_text": config.box_text,
        "slices": config.slices,  # volumes only: which slices were segmented
        **dict.fromkeys(AGENT_KEYS),
        "prompts": None,
    }
    if "agent" in config.modes:
        identity.update(agent_identity(config))
    return identity


def record_identity(identity: dict[str, Any], mode: str) -> dict[str, Any]:
    """The part of the identity one record's numbers depend on (the planner only for agent mode)."""
    keys = SEGMENTER_KEYS + (AGENT_KEYS if mode == "agent" else ())
    return {k: identity.get(k) for k in keys}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}…"


def identity_changes(records: Iterable[dict], identity: dict[str, Any], *, with_agent: bool,
                     previous: dict[str, Any] | None = None) -> list[str]:
    """'key: old -> new' for every identity key a stored record (or, for records from before identities
    were recorded, the previous run.json) holds with another value than ``identity``."""
    changes: dict[str, str] = {}

    def compare(stored: dict[str, Any], keys: tuple[str, ...]) -> None:
        for key in keys:
            if key in stored and stored[key] != identity.get(key) and key not in changes:
                changes[key] = f"{key}: {_short(stored[key])} -> {_short(identity.get(key))}"

    legacy = False
    for record in records:
        stored = record.get("identity")
        if not isinstance(stored, dict):
            legacy = True
            continue
        compare(stored, SEGMENTER_KEYS + (AGENT_KEYS if with_agent and record.get("mode") == "agent" else ()))
    if legacy and previous:
        compare(previous, SEGMENTER_KEYS + (("planner", "max_rounds") if with_agent else ()))
    if "prompts_sha256" in changes and previous and isinstance(previous.get("prompts"), dict):
        now, before = identity.get("prompts") or {}, previous["prompts"]
        files = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
        if files:
            changes["prompts_sha256"] = f"prompt files changed: {', '.join(files)}"
    return list(changes.values())
