"""Where a run's units of work (one image's (mode, case) pairs) are answered.

- in this process, one unit after another, or ``concurrency`` at once in threads sharing one
  segmenter (for API-bound planners: the MLLM's latency overlaps, the segmenter serialises);
- in ``workers`` spawned processes, each with its own segmenter;
- on a Ray cluster (``executor="ray"``): a pool of ``workers`` actors, each with its own segmenter.

Each unit's records go to ``write`` in this process as the unit ends, so ``results.jsonl`` stays
resumable whatever runs the units. ``ray`` is imported only when chosen.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from typing import Any

from evals.config import EvalConfig
from evals.modes import MeteredSegmenter
from evals.runtime import Runtime, Task
from evals.worker import init_worker, prefetch_image, run_image, run_in_worker

Unit = tuple[str, list[Task]]  # image path, its (mode, case) pairs
Write = Callable[[list[dict]], None]
RAY_HINT = "--executor ray needs the [ray] extra (ray is not installed): pip install 'medsam3-agent[ray]'"
RAY_OBJECT_STORE_BYTES = 200 * 2**20  # a local instance: records and cases are small


def split_questions(units: list[Unit]) -> list[Unit]:
    """With concurrency, every agent question is its own unit (an image's questions then run at once too;
    the encoder's cache makes the image's later questions cheap); direct/box stay with their image."""
    out: list[Unit] = []
    for path, tasks in units:
        rest = [t for t in tasks if t[0] != "agent"]
        if rest:
            out.append((path, rest))
        out.extend((path, [t]) for t in tasks if t[0] == "agent")
    return out


def _threads(runtime: Runtime, units: list[Unit], write: Write, concurrency: int) -> None:
    if concurrency == 1:
        # the next unit's image is read and encoded in the background while this one is answered (both cores busy)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval-next") as loader:
            for i, (path, tasks) in enumerate(units):
                if i + 1 < len(units):
                    loader.submit(prefetch_image, runtime, units[i + 1][1])
                write(run_image(runtime, path, tasks))
        return
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eval") as pool:
        futures = [pool.submit(run_image, runtime, path, tasks) for path, tasks in split_questions(units)]
        for future in as_completed(futures):
            write(future.result())


def _processes(config: EvalConfig, units: list[Unit], write: Write) -> None:
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // config.workers)
    with ProcessPoolExecutor(
        max_workers=config.workers,
        mp_context=multiprocessing.get_context("spawn"),  # fork after torch threads start can hang
        initializer=init_worker,
        initargs=(config.model_dump_json(), threads),
    ) as pool:
        futures: list[Future] = [pool.submit(run_in_worker, path, tasks) for path, tasks in units]
        for future in as_completed(futures):
            write(future.result())


class RayWorker:
    """One Ray actor: a Runtime (segmenter, agent) made once; a threaded actor (``max_concurrency``) answers
    ``concurrency`` units at once on it."""

    def __init__(self, config_json: str, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.runtime = Runtime(EvalConfig.model_validate_json(config_json))

    def run(self, path: str, tasks: list[Task]) -> list[dict]:
        return run_image(self.runtime, path, tasks)


def import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "ray":
            raise
        raise RuntimeError(RAY_HINT) from exc
    return ray


def _ray_init(ray: Any, address: str | None) -> None:
    """Join ``address`` (else ``RAY_ADDRESS``), or start a new local instance: never, silently, some other
    instance that happens to run on this machine (which is what ray.init() without an address would do)."""
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    options: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": False}
    if address == "local":
        options["object_store_memory"] = RAY_OBJECT_STORE_BYTES  # only a new local instance takes this
    ray.init(**options)


def _ray(config: EvalConfig, units: list[Unit], write: Write) -> None:
    ray = import_ray()
    started = not ray.is_initialized()
    if started:  # a caller (or a test) that initialised Ray keeps its own instance and settings
        _ray_init(ray, config.address)
    try:
        actor = ray.remote(num_cpus=1, max_concurrency=config.concurrency)(RayWorker)
        actors = [actor.remote(config.model_dump_json(), 1) for _ in range(config.workers)]
        if config.concurrency > 1:
            units = split_questions(units)
        # every unit is queued at once, round robin; each actor runs `concurrency` of its queue at a time
        pending = [actors[i % len(actors)].run.remote(path, tasks) for i, (path, tasks) in enumerate(units)]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            write(ray.get(done[0]))
    finally:
        if started:
            ray.shutdown()


def run_units(config: EvalConfig, segmenter: MeteredSegmenter | None, units: list[Unit], write: Write) -> None:
    """Answer every unit with the configured executor; ``write`` each unit's records as it ends."""
    if config.executor == "ray":
        _ray(config, units, write)
    elif config.workers == 1 or len(units) == 1:
        _threads(Runtime(config, segmenter), units, write, config.concurrency)
    else:
        _processes(config, units, write)
