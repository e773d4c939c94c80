"""`medsam3-agent bench`: how fast and how big. Medians over a few real images.

Measures, on one loaded segmenter (model loading is timed separately, not in the rest):
encoder ms / image, decoder ms / prompt (concept and box prompts on an encoded image), agent
seconds / question (offline planner, image encode included: what a user waits), images / s of
``eval --mode direct`` (the runner end to end, minus model loading) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evals.cases import EvalCase

DEFAULT_DATA = Path("../shared/data")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="data root of <dataset>/manifest.jsonl")
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=5,
                        help="images per measurement (distinct, from several datasets)")
    parser.add_argument("--questions", type=int, default=3, help="agent questions to time (0 skips the agent)")
    parser.add_argument("--backend", default="lite")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--skip-eval", action="store_true", help="skip the eval --mode direct throughput run")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def pick_cases(data: Path, split: str, n: int) -> list[EvalCase]:
    """``n`` concept cases from different images, round-robin over datasets so every modality is timed."""
    from evals.loaders import load_path

    cases = load_path(data, split=split)
    by_dataset: dict[str, list[EvalCase]] = {}
    for case in cases:
        by_dataset.setdefault(case.dataset, []).append(case)
    picked: list[EvalCase] = []
    seen: set[str] = set()
    while len(picked) < n and any(by_dataset.values()):
        for dataset in sorted(by_dataset):
            if by_dataset[dataset] and len(picked) < n:
                case = by_dataset[dataset].pop(0)
                # by content: two datasets may share an image file's pixels (brain_mri and
                # brain_tumor_3d_slices do), and a cached embedding would time nothing
                digest = hashlib.sha1(Path(case.image).read_bytes()).hexdigest()
                if digest not in seen:
                    seen.add(digest)
                    picked.append(case)
    return picked


def run_bench(args: argparse.Namespace, log=lambda text: print(text, file=sys.stderr)) -> dict[str, Any]:
    import numpy as np

    from evals.modes import MeteredSegmenter, target_boxes
    from evals.runner import EvalConfig, run_eval

    if args.images < 1:
        raise ValueError("--images must be at least 1")
    if not args.data.exists():
        raise FileNotFoundError(f"{args.data}: no data root; pass --data ../shared/data (or any manifest folder)")
    cases = pick_cases(args.data, args.split, args.images + 1)  # +1: a warm-up image, not counted
    if len(cases) < 2:
        raise ValueError(f"{args.data}: need at least 2 images in split {args.split!r} to benchmark")
    options: dict[str, Any] = {"weights": args.weights} if args.backend == "lite" else {}
    start = time.perf_counter()
    seg = MeteredSegmenter(args.backend, **options)
    load_s = time.perf_counter() - start

    encode_ms, decode_ms = [], []
    for i, case in enumerate(cases):
        image = case.load_image()
        target = case.load_target(image.shape[:2])
        seg.set_image(image)
        h, w = image.shape[:2]
        # a box prompt first: it pays exactly one whole-image encode (concepts segmented in tiles,
        # like cell nuclei, encode their tiles on their first prompt, which then counts as encode too)
        first = seg.segment(boxes=[[0, 0, w, h]])
        later = [seg.segment(concept=case.concepts[0]), seg.segment(concept=f"the {case.concepts[0]}")]
        later += [seg.segment(boxes=[box]) for box in target_boxes(target.mask, "union")]
        if i == 0:
            continue  # warm-up: first-call allocations and lazy imports
        encode_ms.append(first.timings_ms.get("encode", 0.0))
        decode_ms += [r.timings_ms.get("decode", 0.0) for r in [first, *later]]
    log(f"encoder and decoder timed on {len(encode_ms)} images")

    agent_s: list[float] = []
    agent_note = None
    if args.questions > 0:
        try:
            from agent import Agent  # type: ignore[attr-defined]
        except ImportError as exc:
            agent_note = f"not measured: agent.Agent is not importable ({exc})"
        else:
            agent = Agent(segmenter=seg)
            for case in cases[1 : 1 + args.questions]:
                image = np.ascontiguousarray(case.load_image()[::-1])  # flipped: new pixels, so the encode is paid
                start = time.perf_counter()
                agent.run(f"Segment the {case.concepts[0]} in this image.", image=image)
                agent_s.append(time.perf_counter() - start)
            log(f"agent timed on {len(agent_s)} questions")

    images_per_s = None
    if not args.skip_eval:
        with tempfile.TemporaryDirectory() as tmp:
            datasets = sorted({c.dataset for c in cases})
            config = EvalConfig(data=[args.data], split=args.split, modes=["direct"], out=Path(tmp) / "run",
                                limit=max(1, args.images // len(datasets)), datasets=datasets, hd95=False,
                                backend=args.backend, weights=args.weights)
            start = time.perf_counter()
            outcome = run_eval(config, segmenter=seg, progress=False, log=lambda _: None)
            elapsed = time.perf_counter() - start
            records = [json.loads(x) for x in (Path(tmp) / "run" / "results.jsonl").read_text().splitlines()]
            n_images = len({r["image"] for r in records})
            images_per_s = round(n_images / elapsed, 3) if elapsed > 0 else None
            log(f"eval --mode direct: {n_images} images, {outcome.ran} cases in {elapsed:.1f} s")

    return {
        "backend": seg.info().get("backend"),
        "device": seg.info().get("device"),
        "images": len(encode_ms),
        "model_load_s": round(load_s, 2),
        "encoder_ms_per_image": _median(encode_ms),
        "decoder_ms_per_prompt": _median(decode_ms),
        "agent_s_per_question": _median(agent_s),
        "agent_note": agent_note,
        "eval_direct_images_per_s": images_per_s,
        "peak_rss_mb": _peak_rss_mb(),
    }


def main(args: argparse.Namespace) -> int:
    numbers = run_bench(args)
    labels = {
        "model_load_s": "model load (s)",
        "encoder_ms_per_image": "encoder ms / image (median)",
        "decoder_ms_per_prompt": "decoder ms / prompt (median)",
        "agent_s_per_question": "agent s / question (median, offline planner)",
        "eval_direct_images_per_s": "eval --mode direct images / s",
        "peak_rss_mb": "peak RSS (MB)",
    }
    print(f"{numbers['backend']} on {numbers['device']}, {numbers['images']} images")
    for key, label in labels.items():
        value = numbers[key]
        print(f"  {label:46} {'–' if value is None else value}")
    if numbers["agent_note"]:
        print(f"  agent: {numbers['agent_note']}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(numbers, indent=2))
        print(f"-> {args.out}")
    return 0
