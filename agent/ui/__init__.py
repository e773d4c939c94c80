"""`medsam3-agent ui`: the Gradio chat UI (upload an image, ask, watch the agent work, download the masks).

Heavy imports (gradio, torch) happen in ``main`` so ``medsam3-agent --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--examples", type=Path, nargs="+", action="extend", default=[], metavar="PATH",
                        help="example images: a folder of images and/or image files")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="refuse uploads above this size")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="turns that run at once; the rest wait in the queue")
    parser.add_argument("--queue-size", type=int, default=16, help="turns that may wait before new ones are refused")
    parser.add_argument("--planner", choices=["offline", "openai"], default=None,
                        help="default planner (default: openai when OPENAI_BASE_URL and OPENAI_MODEL are set)")
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL)")
    parser.add_argument("--model", default=None, help="endpoint model name (default: $OPENAI_MODEL)")
    parser.add_argument("--backend", default="lite", choices=["lite", "sam3", "remote"], help="segmenter backend")
    parser.add_argument("--max-rounds", type=int, default=3)
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--no-preload", action="store_true", help="load the segmenter on the first question, not at start")


def config_from_args(args: argparse.Namespace):
    from agent.ui.app import UiConfig
    from agent.ui.settings import UiSettings

    base_url = args.base_url if args.base_url is not None else os.environ.get("OPENAI_BASE_URL", "")
    model = args.model if args.model is not None else os.environ.get("OPENAI_MODEL", "")
    planner = args.planner or ("openai" if base_url and model else "offline")
    defaults = UiSettings(planner=planner, base_url=base_url, model=model, backend=args.backend,
                          max_rounds=args.max_rounds, score_threshold=args.score_threshold)
    return UiConfig(host=args.host, port=args.port, examples=list(args.examples), max_upload_mb=args.max_upload_mb,
                    concurrency=args.concurrency, queue_size=args.queue_size, defaults=defaults)


def main(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    try:
        config = config_from_args(args)
    except ValidationError as exc:
        raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None

    from agent.ui.app import find_examples, launch_app

    find_examples(config.examples)  # a wrong --examples path fails now, with its name
    preload = not args.no_preload and config.defaults.planner == "offline"
    if preload:
        print(f"loading the {config.defaults.backend} segmenter ...", flush=True)
    launch_app(config, block=True, preload=preload)
    return 0
