"""The benchmark run: pick cases, answer them per mode, append per-case records, summarise.

- One ``Segmenter`` per process (and one ``Agent`` on top of it), made once; each image is
  loaded and encoded once for all its prompts and modes (cases are grouped by image).
- Resumable: records go to ``OUT/results.jsonl`` as each image finishes; a rerun skips the
  (mode, case) pairs already scored there and retries the ones that raised.
- Each record carries the run's identity (``evals.identity``); a rerun with another identity
  (segmenter, weights, planner, model, endpoint, prompts) is refused rather than mixed in.
- A case that raises is recorded with its error, scored as an empty prediction where its target
  could be read, and the run goes on.
- Where the cases are answered is ``evals.executors``' business: here, in threads
  (``concurrency``), in ``workers`` spawned processes, or on a Ray cluster.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from evals.cases import EvalCase
from evals.config import EvalConfig
from evals.executors import Unit, import_ray, run_units
from evals.identity import agent_identity, identity_changes, run_identity
from evals.loaders import find_manifests, load_path, load_reasoning_set
from evals.modes import MODES, MeteredSegmenter
from evals.runtime import api_key
from evals.summary import summarize

__all__ = ["EvalConfig", "RunOutcome", "assign_modes", "load_cases", "read_results", "run_eval"]

RESULTS = "results.jsonl"
SUMMARY = "summary.json"
RUN_INFO = "run.json"


def default_questions() -> Path | None:
    """The dev reasoning set shipped in ``evals/data/``, if present."""
    path = Path(str(resources.files("evals") / "data" / "dev_questions.jsonl"))
    return path if path.is_file() else None


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
    scoring time, where the target is known), and takes no volume or measurement case.
    """
    concept_cases = [c for c in cases if c.kind == "concept"]
    question_cases = [c for c in cases if c.kind == "question"]
    tasks: list[tuple[str, EvalCase]] = []
    for mode in modes:
        if mode == "box":
            chosen = [c for c in concept_cases or [c for c in question_cases if c.concepts]
                      if not c.is_volume and c.measure is None]
        elif mode == "direct":
            chosen = concept_cases or [c for c in question_cases if c.concepts]
        else:
            chosen = question_cases or concept_cases
        tasks.extend((mode, c) for c in chosen)
    return tasks


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


def _check_resume(config: EvalConfig, identity: dict[str, Any], done: Iterable[dict]) -> None:
    """Refuse to add records of another identity to the ones ``done`` already holds."""
    info_path = config.out / RUN_INFO
    previous = json.loads(info_path.read_text(encoding="utf-8")).get("identity") if info_path.is_file() else None
    changes = identity_changes(done, identity, with_agent="agent" in config.modes, previous=previous)
    if changes:
        raise ValueError(f"{config.out} holds results made with other settings ({'; '.join(changes)}); "
                         "use another --out, or --fresh to start over")


# --- the run ----------------------------------------------------------------------------------------


class RunOutcome(BaseModel):
    out: Path
    cases: int
    ran: int
    skipped: int
    errors: int
    summary: list[dict]


def _start_run(config: EvalConfig) -> tuple[Path, dict[str, Any]]:
    """Make the output folder (emptied with --fresh), refuse results of another identity, write the run info."""
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS
    if config.fresh and results_path.exists():
        results_path.unlink()
    identity = run_identity(config)
    _check_resume(config, identity, read_results(results_path).values())
    (out / RUN_INFO).write_text(json.dumps({
        "command": config.command,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "identity": identity,
        "config": json.loads(config.model_dump_json()),
    }, indent=2), encoding="utf-8")
    return results_path, identity


def _group_by_image(pending: list[tuple[str, EvalCase]]) -> list[Unit]:
    by_image: dict[str, list[tuple[str, EvalCase]]] = defaultdict(list)
    mode_rank = {m: i for i, m in enumerate(MODES)}
    for mode, case in pending:
        by_image[str(case.image)].append((mode, case))
    for group in by_image.values():
        group.sort(key=lambda t: mode_rank[t[0]])  # agent last: its tool calls reuse the cached embedding
    return list(by_image.items())


def _check_agent(config: EvalConfig) -> None:
    """Fail before the run, not on every case: the agent must import and its key variable be set."""
    try:
        from agent import Agent  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"agent mode needs agent.Agent, which is not importable here ({exc})") from exc
    planner = agent_identity(config)
    if planner["planner"] == "openai" and not planner["model"]:
        raise ValueError("the openai planner needs a model name: --model M, or set OPENAI_MODEL")
    if config.executor == "local":  # Ray actors read the variable on their own nodes
        api_key(config)


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
    if any(m == "agent" for m, _ in tasks):
        _check_agent(config)
    if config.executor == "ray":
        import_ray()  # a missing extra is named before anything is written
    out = config.out
    results_path, identity = _start_run(config)

    done = read_results(results_path)
    pending = [(m, c) for m, c in tasks if (m, c.key) not in done or done[(m, c.key)].get("error")]
    skipped = len(tasks) - len(pending)
    if skipped:
        log(f"resuming: {skipped} of {len(tasks)} (mode, case) pairs already in {results_path}")

    errors = 0
    bar = tqdm.tqdm(total=len(pending), unit="case", desc="eval", disable=not progress, file=sys.stderr)
    with results_path.open("a", encoding="utf-8") as handle:

        def write(records: list[dict]) -> None:  # called in this thread only, as each unit ends
            nonlocal errors
            for record in records:
                handle.write(json.dumps(record) + "\n")
                errors += bool(record.get("error"))
            handle.flush()
            bar.update(len(records))
            bar.set_postfix(errors=errors)

        run_units(config, segmenter, _group_by_image(pending), write)
    bar.close()

    records = read_results(results_path)
    wanted = {(m, c.key) for m, c in tasks}
    selected = [r for k, r in records.items() if k in wanted and not r.get("skipped")]
    rows = summarize(selected)
    (out / SUMMARY).write_text(json.dumps({"identity": identity, "rows": rows}, indent=2), encoding="utf-8")
    from evals.report import write_report

    write_report(out, rows, selected, json.loads((out / RUN_INFO).read_text(encoding="utf-8")))
    return RunOutcome(out=out, cases=len(tasks), ran=len(pending), skipped=skipped,
                      errors=sum(1 for r in selected if r.get("error")), summary=rows)


def is_manifest_root(path: Path) -> bool:
    return Path(path).is_dir() and bool(find_manifests(path))
