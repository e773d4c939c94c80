"""`medsam3-agent calibrate-presence`: per-concept presence thresholds for existing weights, from an
existing val embedding cache (``train-lite --cache``), without training (segmenter/lite/calibrate.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="folder with <dataset>/manifest.jsonl")
    parser.add_argument("--cache", type=Path, required=True,
                        help="train-lite's embedding cache (its val/ folder is read, never written)")
    parser.add_argument("--weights", type=Path, default=None, help="MedSAM3-Lite weights (default: shipped)")
    parser.add_argument("--datasets", default=None,
                        help="comma-separated dataset folders (default: the seven MedSAM3-Lite is trained on)")
    parser.add_argument("--recall", type=float, default=0.97, help="share of val positives each threshold keeps")
    parser.add_argument("--min-positives", type=int, default=10,
                        help="a concept with fewer val positives keeps the default threshold 0.5")
    parser.add_argument("--out", type=Path, default=None,
                        help="thresholds file (default: presence_thresholds.json beside the weights, where the "
                             "Lite backend reads it)")


def print_table(concepts: dict, log=print) -> None:
    """One line per concept: threshold, sensitivity and specificity now and at the default."""
    def pct(v: float | None) -> str:
        return "  –  " if v is None else f"{v:.3f}"

    log(f"{'concept':20} {'thr':>6} {'sens':>6} {'spec':>6} {'n+':>4} {'n-':>4}  at 0.5: {'sens':>6} {'spec':>6}")
    for name, c in concepts.items():
        log(f"{name:20} {c.threshold:6.3f} {pct(c.sensitivity):>6} {pct(c.specificity):>6} {c.n_positive:4d} "
            f"{c.n_negative:4d}  {'':7} {pct(c.sensitivity_at_default):>6} {pct(c.specificity_at_default):>6}"
            f"{'' if c.calibrated else '  (too few positives: default kept)'}")


def main(args: argparse.Namespace) -> int:
    from segmenter.lite.backend import default_weights_path, load_model
    from segmenter.lite.calibrate import calibrate_presence
    from segmenter.lite.dataset import DEFAULT_DATASETS, load_cache, manifest_items
    from segmenter.lite.thresholds import write_thresholds

    if not args.data.is_dir():
        raise FileNotFoundError(f"--data {args.data}: no such folder")
    if not (args.cache / "val").is_dir():
        raise FileNotFoundError(f"--cache {args.cache}: no val/ folder (train-lite's --cache holds train/ and val/)")
    weights = args.weights or default_weights_path()
    datasets = [d for d in args.datasets.split(",") if d] if args.datasets else list(DEFAULT_DATASETS)
    items = manifest_items(args.data, "val", datasets, None)
    samples = load_cache(args.cache / "val", items)
    if not samples:
        raise FileNotFoundError(f"no cached val items of {', '.join(datasets)} in {args.cache / 'val'}")
    concepts = calibrate_presence(load_model(weights), samples, args.recall, min_positives=args.min_positives)
    source = f"{len(samples)} of {len(items)} val items of {', '.join(datasets)} cached in {args.cache / 'val'}"
    path = write_thresholds(Path(weights), concepts, args.recall, source, args.out)
    print(source)
    print_table(concepts)
    print(f"-> {path}")
    return 0
