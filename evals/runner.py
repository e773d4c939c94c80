"""The benchmark run: pick cases, answer them per mode, append per-case records, summarise.

- One ``Segmenter`` per process (and one ``Agent`` on top of it), made once; each image is
  loaded and encoded once for all its prompts and modes (cases are grouped by image).
- Resumable: records go to ``OUT/results.jsonl`` as each image finishes; a rerun skips the
  (mode, case) pairs already scored there and retries the ones that raised.
- A case that raises is recorded with its error and the run goes on.
- ``workers > 1`` runs image groups in that many spawned processes, each with its own model.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, field_validator

from evals.cases import EvalCase
from evals.loaders import find_manifests, load_path, load_reasoning_set
from evals.metrics import score_case
from evals.modes import MODES, BoxStrategy, MeteredSegmenter, predict_agent, predict_box, predict_direct
from evals.summary import summarize

RESULTS = "results.jsonl"
SUMMARY = "summary.json"
RUN_INFO = "run.json"
# settings that change what a record means: a resumed run must use the same ones
_IDENTITY = ("backend", "weights_sha256", "presence_threshold", "box_strategy", "box_text", "planner", "max_rounds")
AGENT_REBUILD_EVERY = 100  # questions; the agent's in-memory checkpointer and image store keep every thread


def default_questions() -> Path | None:
    """The dev reasoning set shipped in ``evals/data/``, if present."""
    path = Path(str(resources.files("evals") / "data" / "dev_questions.jsonl"))
    return path if path.is_file() else None


class EvalConfig(BaseModel):
    data: list[Path] = Field(default_factory=list)
    questions: Path | None = None
    split: str | None = "val"
    modes: list[str] = Field(default_factory=lambda: ["direct"])
    out: Path
    limit: int | None = None  # cases per dataset (and source)
    workers: int = 1
    datasets: list[str] | None = None
    concepts: list[str] | None = None
    image_root: Path | None = None  # COCO file_name root
    backend: str = "lite"
    weights: Path | None = None
    presence_threshold: float = 0.5
    box_strategy: BoxStrategy = "component"
    box_text: bool = True  # box mode sends the concept with the boxes (T+I); False: boxes alone
    planner: str | None = None
    max_rounds: int | None = None
    hd95: bool = True
    save_masks: bool = False
    seed: int = 0
    fresh: bool = False
    command: str = ""

    @field_validator("modes")
    @classmethod
    def _known_modes(cls, modes: list[str]) -> list[str]:
        unknown = [m for m in modes if m not in MODES]
        if unknown or not modes:
            raise ValueError(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
        return list(dict.fromkeys(modes))

    @field_validator("data")
    @classmethod
    def _absolute(cls, paths: list[Path]) -> list[Path]:
        return [Path(p).resolve() for p in paths]  # records name images by absolute path, whatever the cwd

    @field_validator("workers")
    @classmethod
    def _positive(cls, workers: int) -> int:
        if workers < 1:
            raise ValueError("--workers must be at least 1")
        return workers


# --- choosing cases ---------------------------------------------------------------------------------


def _limit_per_dataset(cases: list[EvalCase], limit: int | None) -> list[EvalCase]:
    if limit is None:
        return cases
    taken: dict[tuple[str, str], int] = defaultdict(int)
    kept = []
    for case in cases:
        group = (case.source, case.dataset)
        if taken[group] < limit:
            taken[group] += 1
            kept.append(case)
    return kept


def load_cases(config: EvalConfig) -> list[EvalCase]:
    cases: list[EvalCase] = []
    for path in config.data:
        cases.extend(load_path(path, split=config.split, datasets=config.datasets, concepts=config.concepts,
                               image_root=config.image_root))
    if config.questions is not None:
        roots = [p if p.is_dir() else p.parent for p in config.data]
        cases.extend(load_reasoning_set(config.questions, split=config.split, datasets=config.datasets,
                                        fallback_roots=roots))
    if config.datasets is not None:
        cases = [c for c in cases if c.dataset in config.datasets]
    if config.concepts is not None:
        cases = [c for c in cases if set(c.concepts) & set(config.concepts)]
    seen: set[str] = set()
    for case in cases:
        if case.key in seen:
            raise ValueError(f"case {case.key!r} is loaded twice: the same data was given twice")
        seen.add(case.key)
    return _limit_per_dataset(cases, config.limit)


def assign_modes(cases: list[EvalCase], modes: Iterable[str]) -> list[tuple[str, EvalCase]]:
    """Which cases each mode answers.

    direct / box take the concept cases (manifests, COCO); a run with none takes the question
    cases that name concepts. agent takes the question cases (reasoning sets, ReasonSeg); a run
    with none asks the concept cases a templated question. box skips empty-target cases (at
    scoring time, where the target is known).
    """
    concept_cases = [c for c in cases if c.kind == "concept"]
    question_cases = [c for c in cases if c.kind == "question"]
    tasks: list[tuple[str, EvalCase]] = []
    for mode in modes:
        if mode in ("direct", "box"):
            chosen = concept_cases or [c for c in question_cases if c.concepts]
        else:
            chosen = question_cases or concept_cases
        tasks.extend((mode, c) for c in chosen)
    return tasks


# --- one process's model(s) -------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Runtime:
    """What one process needs to answer cases: the segmenter, and the agent on top of it when asked for."""

    def __init__(self, config: EvalConfig, segmenter: MeteredSegmenter | None = None) -> None:
        seed_everything(config.seed)
        self.config = config
        if segmenter is None:
            options: dict[str, Any] = {}
            if config.backend == "lite":
                options = {"weights": config.weights, "presence_threshold": config.presence_threshold}
            segmenter = MeteredSegmenter(config.backend, **options)
        self.segmenter = segmenter
        self._agent = None
        self._agent_questions = 0

    @property
    def agent(self):
        """The agent on this process's segmenter, made fresh every ``AGENT_REBUILD_EVERY`` questions
        so its per-thread memory does not grow with the benchmark."""
        if self._agent is None or self._agent_questions >= AGENT_REBUILD_EVERY:
            self._agent = build_agent(self.segmenter, self.config)
            self._agent_questions = 0
        self._agent_questions += 1
        return self._agent


def build_agent(segmenter, config: EvalConfig):
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
    return Agent(**options)


def _safe_name(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in key)


def _base_record(mode: str, case: EvalCase) -> dict[str, Any]:
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
    }


def run_image(runtime: Runtime, image_path: str, tasks: list[tuple[str, EvalCase]]) -> list[dict]:
    """All (mode, case) pairs on one image; the image is loaded and encoded once for all of them."""
    config, seg = runtime.config, runtime.segmenter
    records = []
    try:
        image = tasks[0][1].load_image()
    except Exception as exc:  # noqa: BLE001  (unreadable image: every case on it fails the same way)
        message = f"{type(exc).__name__}: {exc}"
        return [{**_base_record(m, c), "error": message} for m, c in tasks]
    for mode, case in tasks:
        record = _base_record(mode, case)
        start_encode = seg.encode_ms
        start = time.perf_counter()
        try:
            target = case.load_target(image.shape[:2])
            if mode == "box" and target.empty:
                # no box exists for "nothing there": recorded as skipped so a rerun does not retry it
                records.append({**record, "skipped": "empty target: no box to prompt with"})
                continue
            start = time.perf_counter()  # time the prediction, not the reading of the ground truth
            if mode == "direct":
                pred, info = predict_direct(seg, image, case)
            elif mode == "box":
                pred, info = predict_box(seg, image, case, target.mask, config.box_strategy, text=config.box_text)
            else:
                pred, info = predict_agent(runtime.agent, image, case)
            elapsed = time.perf_counter() - start
            record.update(info)
            record.update(score_case(pred, target.mask, target.ignore, with_hd95=config.hd95).model_dump())
            if config.save_masks:
                from PIL import Image

                folder = config.out / "masks" / mode
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pred.astype(np.uint8) * 255).save(folder / f"{_safe_name(case.key)}.png")
        except Exception as exc:  # noqa: BLE001  (recorded per case; the run goes on)
            elapsed = time.perf_counter() - start
            record["error"] = f"{type(exc).__name__}: {exc}"
        encode = (seg.encode_ms - start_encode) / 1000
        record["encode_seconds"] = round(encode, 4)
        record["seconds"] = round(max(0.0, elapsed - encode), 4)
        records.append(record)
    return records


# worker processes: one Runtime each, made by the pool initializer
_WORKER: Runtime | None = None


def _init_worker(config_json: str, threads: int) -> None:
    import torch

    global _WORKER
    torch.set_num_threads(threads)
    _WORKER = Runtime(EvalConfig.model_validate_json(config_json))


def _run_in_worker(image_path: str, tasks: list[tuple[str, EvalCase]]) -> list[dict]:
    assert _WORKER is not None
    return run_image(_WORKER, image_path, tasks)


# --- results file -----------------------------------------------------------------------------------


def read_results(path: Path) -> dict[tuple[str, str], dict]:
    """Latest record per (mode, key); a torn last line (an interrupted run) is skipped."""
    records: dict[tuple[str, str], dict] = {}
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            records[(record["mode"], record["key"])] = record
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return records


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_identity(config: EvalConfig) -> dict[str, Any]:
    weights_sha = None
    if config.backend == "lite":
        from segmenter.lite.backend import default_weights_path

        path = config.weights or default_weights_path()
        weights_sha = _sha256(path) if Path(path).is_file() else None
    return {
        "backend": config.backend,
        "weights": str(config.weights) if config.weights else "shipped",
        "weights_sha256": weights_sha,
        "presence_threshold": config.presence_threshold,
        "box_strategy": config.box_strategy,
        "box_text": config.box_text,
        "planner": config.planner,
        "max_rounds": config.max_rounds,
    }


def _check_resume(out: Path, identity: dict[str, Any]) -> None:
    info_path = out / RUN_INFO
    if not info_path.is_file() or not (out / RESULTS).is_file():
        return
    previous = json.loads(info_path.read_text()).get("identity", {})
    changed = [k for k in _IDENTITY if previous.get(k) != identity.get(k)]
    if changed:
        details = ", ".join(f"{k}: {previous.get(k)!r} -> {identity.get(k)!r}" for k in changed)
        raise ValueError(
            f"{out} holds results made with other settings ({details}); use another --out, or --fresh to start over"
        )


# --- the run ----------------------------------------------------------------------------------------


class RunOutcome(BaseModel):
    out: Path
    cases: int
    ran: int
    skipped: int
    errors: int
    summary: list[dict]


def _start_run(config: EvalConfig) -> Path:
    """Make the output folder (emptied with --fresh), refuse results of other settings, write the run info."""
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS
    if config.fresh and results_path.exists():
        results_path.unlink()
    identity = run_identity(config)
    _check_resume(out, identity)
    (out / RUN_INFO).write_text(json.dumps({
        "command": config.command,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "identity": identity,
        "config": json.loads(config.model_dump_json()),
    }, indent=2))
    return results_path


def _group_by_image(pending: list[tuple[str, EvalCase]]) -> dict[str, list[tuple[str, EvalCase]]]:
    by_image: dict[str, list[tuple[str, EvalCase]]] = defaultdict(list)
    mode_rank = {m: i for i, m in enumerate(MODES)}
    for mode, case in pending:
        by_image[str(case.image)].append((mode, case))
    for group in by_image.values():
        group.sort(key=lambda t: mode_rank[t[0]])  # agent last: its tool calls reuse the cached embedding
    return by_image


def _run_groups(
    config: EvalConfig,
    segmenter: MeteredSegmenter | None,
    by_image: dict[str, list[tuple[str, EvalCase]]],
    write: Callable[[list[dict], int], None],
) -> None:
    """Run every image's (mode, case) group, here or in ``config.workers`` processes; ``write`` each as it ends."""
    if config.workers == 1 or len(by_image) == 1:
        runtime = Runtime(config, segmenter)
        for image_path, group in by_image.items():
            write(run_image(runtime, image_path, group), len(group))
        return
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // config.workers)
    with ProcessPoolExecutor(
        max_workers=config.workers,
        mp_context=multiprocessing.get_context("spawn"),  # fork after torch threads start can hang
        initializer=_init_worker,
        initargs=(config.model_dump_json(), threads),
    ) as pool:
        futures = {pool.submit(_run_in_worker, path, group): group for path, group in by_image.items()}
        for future in as_completed(futures):
            write(future.result(), len(futures[future]))


def run_eval(
    config: EvalConfig,
    *,
    segmenter: MeteredSegmenter | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda text: print(text, file=sys.stderr),
) -> RunOutcome:
    """Run (or resume) a benchmark into ``config.out``; returns the summary rows."""
    import tqdm

    cases = load_cases(config)
    if not cases:
        raise ValueError("no cases selected: check --data / --questions, --split, --datasets and --concepts")
    tasks = assign_modes(cases, config.modes)
    out = config.out
    results_path = _start_run(config)

    done = read_results(results_path)
    pending = [(m, c) for m, c in tasks if (m, c.key) not in done or done[(m, c.key)].get("error")]
    skipped = len(tasks) - len(pending)
    if skipped:
        log(f"resuming: {skipped} of {len(tasks)} (mode, case) pairs already in {results_path}")
    if "agent" in config.modes and any(m == "agent" for m, _ in pending):
        try:
            from agent import Agent  # noqa: F401  (fail before the run, not on every case)
        except ImportError as exc:
            raise RuntimeError(f"agent mode needs agent.Agent, which is not importable here ({exc})") from exc

    errors = 0
    bar = tqdm.tqdm(total=len(pending), unit="case", desc="eval", disable=not progress, file=sys.stderr)
    with results_path.open("a", encoding="utf-8") as handle:

        def write(records: list[dict], n_tasks: int) -> None:
            nonlocal errors
            for record in records:
                handle.write(json.dumps(record) + "\n")
                errors += bool(record.get("error"))
            handle.flush()
            bar.update(n_tasks)
            bar.set_postfix(errors=errors)

        _run_groups(config, segmenter, _group_by_image(pending), write)
    bar.close()

    records = read_results(results_path)
    wanted = {(m, c.key) for m, c in tasks}
    selected = [r for k, r in records.items() if k in wanted and not r.get("skipped")]
    rows = summarize(selected)
    (out / SUMMARY).write_text(json.dumps(rows, indent=2))
    from evals.report import write_report

    write_report(out, rows, selected, json.loads((out / RUN_INFO).read_text()))
    return RunOutcome(out=out, cases=len(tasks), ran=len(pending), skipped=skipped,
                      errors=sum(1 for r in selected if r.get("error")), summary=rows)


def is_manifest_root(path: Path) -> bool:
    return Path(path).is_dir() and bool(find_manifests(path))
