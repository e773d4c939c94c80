"""Refine modes side by side, on clean and shifted images: `medsam3-agent eval`'s own runner (run_eval) once
per (shift, refine), all on one loaded Lite model whose embedding cache holds every image of the run, so each
image (and each shifted rendering) is encoded once however many refine modes are compared.

    python scripts/compare_refine.py --data ../shared/data --datasets kvasir_seg:40,drishti_gs1 --out runs/refine

writes OUT/<dataset>/<clean|SHIFT>_<refine>/ (results.jsonl, summary.json, report.md, as `eval` does) and prints
one line per run. Each run equals `medsam3-agent eval --data D --split S --mode direct --datasets X [--limit N]
--presence-threshold P --refine R [--shift SHIFT]`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def main() -> int:
    from evals.config import EvalConfig
    from evals.modes import MeteredSegmenter
    from evals.runner import run_eval

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--datasets", required=True,
                        help="comma-separated NAME or NAME:LIMIT (at most LIMIT cases); each is run on its own")
    parser.add_argument("--split", default="val")
    parser.add_argument("--refine", default="none,box")
    parser.add_argument("--shift", default="other-hospital", help="the shifted runs' shift ('' for clean only)")
    parser.add_argument("--presence-threshold", type=float, default=0.5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    # one model, with room for every image of a run (4 MB each; tiles of large images count too)
    seg = MeteredSegmenter("lite", presence_threshold=args.presence_threshold, cache_images=4096, cache_mb=6000)
    for entry in args.datasets.split(","):
        dataset, _, limit = entry.partition(":")
        for shift in [None, args.shift or None] if args.shift else [None]:
            for refine in args.refine.split(","):
                seg.backend.refine = refine  # what the run's identity says (the config's refine)
                out = args.out / dataset / f"{shift or 'clean'}_{refine}"
                config = EvalConfig(data=[args.data], split=args.split, datasets=[dataset],
                                    limit=int(limit) if limit else None, presence_threshold=args.presence_threshold,
                                    refine=refine, shift=shift, out=out,
                                    command=shlex.join(["python", *sys.argv]))
                outcome = run_eval(config, segmenter=seg, progress=False, log=lambda _: None)
                row = next(r for r in outcome.summary if (r["mode"], r["dataset"], r["concept"]) ==
                           ("direct", dataset, "*"))
                concepts = {r["concept"]: round(r["dice"], 4) for r in outcome.summary
                            if r["dataset"] == dataset and r["concept"] != "*" and r["dice"] is not None}
                print(f"{dataset} {shift or 'clean'} {refine}: n={row['n']} dice={row['dice']:.4f} "
                      f"errors={row['errors']} {concepts}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
