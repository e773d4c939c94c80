"""Answering the (mode, case) pairs of one image (or, through ``evals.volumes``, of one volume).

Every executor (in-process, threads, worker processes, Ray actors) makes one ``Runtime`` per
process and calls ``run_image`` with a unit of work; the records it returns are what
``results.jsonl`` holds.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np

from evals.cases import EvalCase, Target
from evals.config import EvalConfig
from evals.measures import answer_measure
from evals.metrics import score_case
from evals.modes import EncodeMeter, predict_agent, predict_box, predict_direct
from evals.runtime import Runtime, Task, base_record, safe_name
from evals.shift import shift_image
from evals.volumes import run_volume
from segmenter.facade import Segmenter


def _predict(runtime: Runtime, seg: Segmenter, image: np.ndarray, mode: str, case: EvalCase,
             target: Target) -> tuple[np.ndarray, dict[str, Any]]:
    config = runtime.config
    if mode == "direct":
        return predict_direct(seg, image, case)
    if mode == "box":
        return predict_box(seg, image, case, target.mask, config.box_strategy, text=config.box_text)
    return predict_agent(runtime.agent, image, case)


def _timed(record: dict[str, Any], start: float, meter: EncodeMeter) -> dict[str, Any]:
    """The record's time split into the encoder's (metered) and the rest since ``start``."""
    elapsed = time.perf_counter() - start
    encode = meter.ms / 1000
    record["encode_seconds"] = round(encode, 4)
    record["seconds"] = round(max(0.0, elapsed - encode), 4)
    return record


def _answer_measure(runtime: Runtime, seg: Segmenter, image: np.ndarray, mode: str, case: EvalCase) -> dict[str, Any]:
    """A measurement case's record (``evals.measures``); a failure keeps its error and no value."""
    record = {**base_record(runtime, mode, case), "measure": case.measure}
    start = time.perf_counter()
    with EncodeMeter() as meter:
        try:
            record.update(answer_measure(seg, runtime.agent if mode == "agent" else None, image, mode, case))
        except Exception as exc:  # noqa: BLE001  (recorded per case; the run goes on)
            record["error"] = f"{type(exc).__name__}: {exc}"
    return _timed(record, start, meter)


def _answer(runtime: Runtime, seg: Segmenter, image: np.ndarray, mode: str, case: EvalCase) -> dict[str, Any]:
    """One (mode, case) record. A failure is recorded with its error and, where the target could be read,
    scored as an empty prediction (so it weighs in the metrics as the nothing it delivered)."""
    if case.measure is not None:
        return _answer_measure(runtime, seg, image, mode, case)
    config = runtime.config
    record = base_record(runtime, mode, case)
    target: Target | None = None
    start = time.perf_counter()
    with EncodeMeter() as meter:
        try:
            target = case.load_target(image.shape[:2])
            if mode == "box" and target.empty:
                # no box exists for "nothing there": recorded as skipped so a rerun does not retry it
                return {**record, "skipped": "empty target: no box to prompt with"}
            start = time.perf_counter()  # time the prediction, not the reading of the ground truth
            pred, info = _predict(runtime, seg, image, mode, case, target)
            record.update(info)
            record.update(score_case(pred, target.mask, target.ignore, with_hd95=config.hd95).model_dump())
            if config.save_masks:
                from PIL import Image

                folder = config.out / "masks" / mode
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pred.astype(np.uint8) * 255).save(folder / f"{safe_name(case.key)}.png")
        except Exception as exc:  # noqa: BLE001  (recorded per case; the run goes on)
            record["error"] = f"{type(exc).__name__}: {exc}"
            if target is not None:
                empty = np.zeros(image.shape[:2], dtype=bool)
                record.update(score_case(empty, target.mask, target.ignore, with_hd95=False).model_dump())
    return _timed(record, start, meter)


def _load(runtime: Runtime, tasks: list[Task]) -> np.ndarray:
    """The unit's image as its cases see it."""
    image = tasks[0][1].load_image()
    if runtime.config.shift is not None:  # one rendering per image, for all its cases
        image = shift_image(image, runtime.config.shift, f"{tasks[0][1].dataset}/{tasks[0][1].id}")
    return image


def prefetch_image(runtime: Runtime, tasks: list[Task]) -> None:
    """Start encoding a unit's image in the background (a loop calls it with the next unit while it answers the
    current one); a volume or an unreadable image is left to ``run_image``."""
    if not tasks[0][1].is_volume:
        with contextlib.suppress(Exception):
            runtime.segmenter.prefetch(_load(runtime, tasks))


def run_image(runtime: Runtime, image_path: str, tasks: list[Task]) -> list[dict]:
    """All (mode, case) pairs on one image; the image is loaded and encoded once for all of them.
    A volume's pairs go to ``evals.volumes``."""
    if tasks[0][1].is_volume:
        if runtime.config.shift is not None:  # refused rather than scored unshifted under a shifted identity
            return [{**base_record(runtime, m, c), "error": "--shift applies to 2D images, not volumes"}
                    for m, c in tasks]
        return run_volume(runtime, tasks)
    try:
        image = _load(runtime, tasks)
    except Exception as exc:  # noqa: BLE001  (unreadable image: every case on it fails the same way)
        message = f"{type(exc).__name__}: {exc}"
        return [{**base_record(runtime, m, c), "error": message} for m, c in tasks]
    seg = runtime.segmenter.handle(image)  # this image's prompts go to this image, whatever other threads set
    return [_answer(runtime, seg, image, mode, case) for mode, case in tasks]


# worker processes: one Runtime each, made by the pool initializer
_WORKER: Runtime | None = None


def init_worker(config_json: str, threads: int) -> None:
    import torch

    from segmenter.lite.runtime import set_threads

    global _WORKER
    torch.set_num_threads(threads)
    set_threads(threads)  # the fast runtime's parts share the cores likewise
    _WORKER = Runtime(EvalConfig.model_validate_json(config_json))


def run_in_worker(image_path: str, tasks: list[Task]) -> list[dict]:
    if _WORKER is None:
        raise RuntimeError("run_in_worker called outside a worker initialised by init_worker")
    return run_image(_WORKER, image_path, tasks)
