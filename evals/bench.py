"""`medsam3-agent bench`: how fast and how big. Medians over a few real images.

Measures, on one loaded segmenter (model loading is timed separately, not in the rest):
encoder ms / image, decoder ms / prompt (concept and box prompts on an encoded image), for
MedSAM3-Lite the fast encoder and concept decoder (OpenVINO on CPU) against the PyTorch reference
on the same images in the same run (median, p90, ratio), agent
seconds / question (offline planner, image encode included: what a user waits), images / s of
``eval --mode direct`` (the runner end to end, minus model loading), seconds per 100-slice volume
(``segment_volume``, the agent's volume path; a real val volume where the data holds one) and the
process's peak RSS. Model load is the constructor's time and, where the backend loads its fast
runtime in the background, the time until that is ready too.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

_nothing = contextlib.nullcontext

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
    parser.add_argument("--volume-slices", type=int, default=100, metavar="N",
                        help="time an N-slice volume through segment_volume, as the agent runs volumes (0 skips)")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    parser.add_argument("--dice", type=int, default=0, metavar="N",
                        help="also score N val cases per dataset with the fast and the reference (PyTorch) path "
                             "and print their Dice side by side (MedSAM3-Lite; 0 skips)")


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _p90(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, -(-9 * len(ordered) // 10) - 1)], 3)  # nearest rank


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def pick_cases(data: Path, split: str, n: int) -> list[EvalCase]:
    """``n`` concept cases from different images, round-robin over datasets so every modality is timed."""
    from evals.loaders import load_path

    # 2D concept cases only: a volume is timed per slice by the volume path, not here
    cases = [c for c in load_path(data, split=split) if not c.is_volume and c.concepts and c.measure is None]
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


def compare_paths(backend: Any, images: list[Any], concepts: list[str]) -> dict[str, Any]:
    """The fast encoder / concept decoder against the PyTorch reference, alternating on the same images."""
    from segmenter.lite.frame import letterbox

    times: dict[str, list[float]] = {"enc_fast": [], "enc_ref": [], "dec_fast": [], "dec_ref": []}

    def timed(key: str, fn: Any, *xs: Any) -> Any:
        start = time.perf_counter()
        out = fn(*xs)
        times[key].append((time.perf_counter() - start) * 1000)
        return out

    def reference_decode(emb: Any, text: Any) -> Any:
        with backend.reference_path():
            return backend._decode_concept(emb, text)

    for i, (image, concept) in enumerate(zip(images, concepts, strict=True)):
        if i == 1:  # the first image warms both paths up (first-call allocations); not counted
            times = {key: [] for key in times}
        x = letterbox(image)[0][None]
        emb = timed("enc_fast", backend.encoder, x)
        timed("enc_ref", backend.reference_encoder, x)
        text = backend._text(concept)
        timed("dec_fast", backend._decode_concept, emb, text)
        timed("dec_ref", reference_decode, emb, text)
    numbers: dict[str, Any] = {"encoder_runtime": backend.encoder_name}
    for part in ("enc", "dec"):
        for path in ("fast", "ref"):
            numbers[f"{part}_{path}_ms_median"] = _median(times[f"{part}_{path}"])
            numbers[f"{part}_{path}_ms_p90"] = _p90(times[f"{part}_{path}"])
        ref, fast = numbers[f"{part}_ref_ms_median"], numbers[f"{part}_fast_ms_median"]
        numbers[f"{part}_speedup"] = round(ref / fast, 2) if ref and fast else None
    return numbers


def compare_dice(seg: Any, data: Path, split: str, per_dataset: int) -> list[dict[str, Any]]:
    """Mean Dice per dataset/concept of the fast path and the reference path on the same val cases."""
    from evals.loaders import load_path
    from evals.metrics import dice

    picked: dict[str, list[EvalCase]] = {}
    for case in load_path(data, split=split):
        if case.is_volume or not case.concepts or case.measure is not None:
            continue
        if len(picked.setdefault(case.dataset, [])) < per_dataset:
            picked[case.dataset].append(case)
    rows = []
    for dataset, cases in sorted(picked.items()):
        scores: dict[str, list[float]] = {"fast": [], "reference": []}
        for case in cases:
            image = case.load_image()
            target = case.load_target(image.shape[:2])
            for path in scores:
                with seg.backend.reference_path() if path == "reference" else _nothing():
                    masks = [seg.segment(image, concept=c).union_mask for c in case.concepts]
                scores[path].append(dice(np.logical_or.reduce(masks), target.mask, target.ignore))
        fast, ref = statistics.fmean(scores["fast"]), statistics.fmean(scores["reference"])
        rows.append({"dataset": dataset, "concepts": "+".join(sorted({c for x in cases for c in x.concepts})),
                     "cases": len(cases), "dice_fast": round(fast, 4), "dice_reference": round(ref, 4),
                     "delta": round(fast - ref, 4)})
    return rows


def _volume_slices(data: Path, split: str, n: int) -> tuple[np.ndarray, str, str]:
    """``n`` slices (S, H, W, 3) and a concept: a real val volume's slices where the data holds one (mirrored
    copies make up the count, so no slice repeats an embedding already cached), else drawn slices."""
    from evals.loaders import load_path
    from segmenter.study_io import load_study

    case = next((c for c in load_path(data, split=split) if c.is_volume and c.concepts), None)
    if case is not None:
        real = load_study(case.image).slices
        variants = [real, real[:, ::-1], real[:, :, ::-1], real[:, ::-1, ::-1]]
        slices = np.concatenate([np.ascontiguousarray(v) for v in variants] * -(-n // (4 * len(real))))[:n]
        return slices, case.concepts[0], f"{case.dataset}/{case.id}"
    yy, xx = np.mgrid[:256, :256]
    drawn = np.zeros((n, 256, 256, 3), np.uint8)
    for i in range(n):  # a bright disc that grows and shrinks over the slices, on a gradient
        radius = 20 + 40 * np.sin(np.pi * (i + 0.5) / n)
        drawn[i] = (((yy - 128) ** 2 + (xx - 120) ** 2 < radius**2) * 150 + xx // 4 + i % 7)[..., None]
    return drawn, "liver", "drawn"


def time_volume(seg: Any, data: Path, split: str, n: int, log: Any = lambda _: None) -> dict[str, Any]:
    """Seconds for an ``n``-slice volume through ``segment_volume`` (one concept), scaled to 100 slices."""
    from segmenter.study import Study
    from segmenter.volume import segment_volume

    slices, concept, source = _volume_slices(data, split, n)
    start = time.perf_counter()
    segment_volume(seg, Study(slices=slices), concept)
    elapsed = time.perf_counter() - start
    log(f"volume: {n} slices of {source} in {elapsed:.1f} s")
    return {"volume_slices": n, "volume_source": source, "volume_s": round(elapsed, 2),
            "volume_s_per_100_slices": round(elapsed * 100 / n, 2)}


# A user's process: import the segmenter and load it until its fast runtime is ready, then one offline-agent question.
_FRESH = """
import json, resource, sys, time
start = time.perf_counter()
from segmenter.facade import Segmenter
seg = Segmenter(sys.argv[1], **json.loads(sys.argv[2]))
getattr(seg.backend, "ready", lambda: None)()
ready = time.perf_counter() - start
from agent.core import Agent
start = time.perf_counter()
Agent(segmenter=seg).run(sys.argv[4], image=sys.argv[3])
print(json.dumps({"ready_s": ready, "question_s": time.perf_counter() - start, "torch": "torch" in sys.modules,
                  "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def time_fresh_process(backend: str, options: dict[str, Any], case: EvalCase) -> dict[str, Any]:
    """Load time and peak RSS as a user meets them: a new Python process that imports and loads the segmenter
    (until ready) and answers one question offline; also whether it imported PyTorch (a cached fast runtime
    does not need it). The bench process itself holds both paths and has imported everything."""
    import subprocess

    question = f"Segment the {case.concepts[0]} in this image."
    out = subprocess.run([sys.executable, "-c", _FRESH, backend, json.dumps(options), str(case.image), question],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"the fresh-process load failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    numbers = json.loads(out.stdout.strip().splitlines()[-1])
    peak = numbers["peak_rss_kb"] / (1024 * 1024 if sys.platform == "darwin" else 1024)
    return {"fresh_load_s": round(numbers["ready_s"], 2), "fresh_question_s": round(numbers["question_s"], 2),
            "fresh_peak_rss_mb": round(peak, 1), "fresh_imported_torch": numbers["torch"]}


def _lite_paths(args: argparse.Namespace, seg: Any, cases: list[EvalCase], log: Any) -> dict[str, Any]:
    """Fast vs reference timings (and Dice with ``--dice``) where the backend has both paths (MedSAM3-Lite)."""
    backend = getattr(seg, "backend", None)
    if not hasattr(backend, "reference_path"):
        return {}
    numbers = compare_paths(backend, [c.load_image() for c in cases], [c.concepts[0] for c in cases])
    log(f"fast ({numbers['encoder_runtime']}) and reference encoder timed on {len(cases) - 1} images")
    if args.dice > 0:
        numbers["dice"] = compare_dice(seg, args.data, args.split, args.dice)
        log(f"Dice of both paths on {sum(r['cases'] for r in numbers['dice'])} {args.split} cases")
    return numbers


def run_bench(args: argparse.Namespace, log=lambda text: print(text, file=sys.stderr)) -> dict[str, Any]:
    from evals.modes import MeteredSegmenter, target_boxes
    from evals.runner import EvalConfig, run_eval

    if args.images < 1:
        raise ValueError("--images must be at least 1")
    if not args.data.exists():
        raise FileNotFoundError(f"{args.data}: no data root; pass --data ../shared/data (or any manifest folder)")
    cases = pick_cases(args.data, args.split, args.images + 1)  # +1: a warm-up image, not counted
    if len(cases) < 2:
        raise ValueError(f"{args.data}: need at least 2 images in split {args.split!r} to benchmark")
    options: dict[str, Any] = {"weights": str(args.weights)} if args.backend == "lite" and args.weights else {}
    # first, before this process has imported anything: the fresh process may convert parts and fill the cache
    fresh = time_fresh_process(args.backend, options, cases[1]) if args.backend == "lite" else {}
    if fresh:
        log(f"fresh process: ready in {fresh['fresh_load_s']} s, one question in {fresh['fresh_question_s']} s")
    start = time.perf_counter()
    seg = MeteredSegmenter(args.backend, **options)
    load_s = time.perf_counter() - start
    getattr(seg.backend, "ready", lambda: None)()  # LiteBackend loads its fast runtime in the background
    ready_s = time.perf_counter() - start

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
    paths = _lite_paths(args, seg, cases, log)

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
            results = (Path(tmp) / "run" / "results.jsonl").read_text(encoding="utf-8")
            records = [json.loads(x) for x in results.splitlines()]
            n_images = len({r["image"] for r in records})
            images_per_s = round(n_images / elapsed, 3) if elapsed > 0 else None
            log(f"eval --mode direct: {n_images} images, {outcome.ran} cases in {elapsed:.1f} s")

    volume = time_volume(seg, args.data, args.split, args.volume_slices, log) if args.volume_slices > 0 else {}

    return {
        "backend": seg.info().get("backend"),
        "device": seg.info().get("device"),
        "images": len(encode_ms),
        "model_load_s": round(load_s, 3),  # ms: without PyTorch the facade builds in a few ms
        "model_ready_s": round(ready_s, 3),
        "encoder_ms_per_image": _median(encode_ms),
        "decoder_ms_per_prompt": _median(decode_ms),
        "agent_s_per_question": _median(agent_s),
        "agent_note": agent_note,
        "eval_direct_images_per_s": images_per_s,
        "volume_s_per_100_slices": volume.get("volume_s_per_100_slices"),
        "peak_rss_mb": _peak_rss_mb(),
        **fresh,
        **volume,
        **paths,
    }


def _print_paths(numbers: dict[str, Any]) -> None:
    """Reference (PyTorch) against fast path, median and p90 in ms, and Dice side by side where measured."""
    if "enc_ref_ms_median" not in numbers:
        return
    print(f"  fast path ({numbers['encoder_runtime']}) vs reference (PyTorch), same images, ms median / p90:")
    for part, label in (("enc", "image encoder"), ("dec", "concept decoder (1 prompt)")):
        ref = f"{numbers[f'{part}_ref_ms_median']} / {numbers[f'{part}_ref_ms_p90']}"
        fast = f"{numbers[f'{part}_fast_ms_median']} / {numbers[f'{part}_fast_ms_p90']}"
        print(f"    {label:28} reference {ref:20} fast {fast:20} {numbers[f'{part}_speedup']}x")
    if numbers.get("dice"):
        print(f"  Dice, fast vs reference path ({sum(r['cases'] for r in numbers['dice'])} cases):")
        print(f"    {'dataset':24} {'concepts':28} {'cases':>5} {'fast':>7} {'ref':>7} {'delta':>8}")
        for r in numbers["dice"]:
            print(f"    {r['dataset'][:24]:24} {r['concepts'][:28]:28} {r['cases']:5} {r['dice_fast']:7.4f} "
                  f"{r['dice_reference']:7.4f} {r['delta']:+8.4f}")


def main(args: argparse.Namespace) -> int:
    numbers = run_bench(args)
    labels = {
        "model_load_s": "model load (s)",
        "model_ready_s": "model load incl. fast runtime (s)",
        "encoder_ms_per_image": "encoder ms / image (median)",
        "decoder_ms_per_prompt": "decoder ms / prompt (median)",
        "agent_s_per_question": "agent s / question (median, offline planner)",
        "eval_direct_images_per_s": "eval --mode direct images / s",
        "volume_s_per_100_slices": "volume s / 100 slices (segment_volume)",
        "peak_rss_mb": "peak RSS (MB)",
        "fresh_load_s": "new process: import + load until ready (s)",
        "fresh_question_s": "new process: first question (s)",
        "fresh_peak_rss_mb": "new process: peak RSS (MB)",
        "fresh_imported_torch": "new process imported PyTorch",
    }
    print(f"{numbers['backend']} on {numbers['device']}, {numbers['images']} images")
    for key, label in labels.items():
        value = numbers.get(key)
        print(f"  {label:46} {'–' if value is None else value}")
    _print_paths(numbers)
    if numbers.get("volume_slices", 100) != 100:
        print(f"  (volume: {numbers['volume_slices']} slices timed, scaled to 100)")
    if numbers["agent_note"]:
        print(f"  agent: {numbers['agent_note']}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(numbers, indent=2), encoding="utf-8")
        print(f"-> {args.out}")
    return 0
