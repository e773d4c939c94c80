"""`medsam3-agent ui`: the Gradio chat UI (upload an image, ask, watch the agent work, download the masks).

Heavy imports (gradio, torch) happen in ``main`` so ``medsam3-agent --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config import Settings
from agent.ui.auth import AUTH_ENV
from segmenter.backends import BACKENDS

if TYPE_CHECKING:
    from agent.ui.app import UiConfig


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--examples", type=Path, nargs="+", action="extend", default=[], metavar="PATH",
                        help="example images: a folder of images and/or image files")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="refuse uploads above this size")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="turns that run at once (the segmenter still takes one at a time); the rest queue")
    parser.add_argument("--queue-size", type=int, default=16, help="turns that may wait before new ones are refused")
    parser.add_argument("--planner", choices=["offline", "openai"], default=None,
                        help="default planner (default: openai when a base URL or a model is given, by flag or "
                             "OPENAI_BASE_URL / OPENAI_MODEL, else offline)")
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL)")
    parser.add_argument("--model", default=None, help="endpoint model name (default: $OPENAI_MODEL)")
    parser.add_argument("--backend", default="lite", choices=list(BACKENDS), help="segmenter backend")
    parser.add_argument("--max-rounds", type=int, default=3)
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="one presence threshold for every concept (default: none, each concept's threshold "
                             "calibrated for the segmenter's weights, as the CLI and API use)")
    parser.add_argument("--window", default="auto",
                        help="the panel's default window for DICOM / NIfTI uploads: auto (default: a CT file's own "
                             "window, else abdomen; MR and NIfTI the percentile window), a preset (lung, abdomen, "
                             "liver, brain, bone, mediastinum) or LEVEL,WIDTH (e.g. --window=-600,1500)")
    parser.add_argument("--no-preload", action="store_true",
                        help="load the segmenter on the first question, not at start")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per MLLM request (default 60)")
    parser.add_argument("--retries", type=int, default=1, help="retries of a failed MLLM request (default 1)")
    parser.add_argument("--cache-ttl", type=int, default=3600, metavar="SECONDS",
                        help="a chat's files, thread and Gradio's copies go after this long unused (default 3600)")
    access = parser.add_argument_group("access")
    access.add_argument("--auth", action="append", default=[], metavar="USER:PASS",
                        help="require this login (repeatable); visible in the process list: prefer --auth-file "
                             f"or ${AUTH_ENV}")
    access.add_argument("--auth-file", type=Path, default=None, metavar="PATH", help="logins, one USER:PASS a line")
    access.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback --host without a login (a VPN or proxy login protects it)")
    access.add_argument("--debug", action="store_true", help="show Python errors in the browser")


def config_from_args(args: argparse.Namespace, settings: Settings | None = None) -> UiConfig:
    """The UI's launch config from its flags and ``settings`` (the environment, read here when not given)."""
    from agent.ui.app import UiConfig
    from agent.ui.auth import load_credentials
    from agent.ui.settings import UiSettings

    settings = settings if settings is not None else Settings()
    base_url = args.base_url if args.base_url is not None else settings.openai_base_url
    model = args.model if args.model is not None else settings.openai_model
    planner = settings.planner_for(args.planner or "auto", base_url=base_url, model=model)
    auth_env = {AUTH_ENV: settings.medsam3_ui_auth.get_secret_value()} if settings.medsam3_ui_auth else {}
    defaults = UiSettings(planner=planner, base_url=base_url, model=model, backend=args.backend,
                          max_rounds=args.max_rounds, score_threshold=args.score_threshold,
                          window=args.window, timeout=args.timeout, retries=args.retries)
    return UiConfig(host=args.host, port=args.port, examples=list(args.examples), max_upload_mb=args.max_upload_mb,
                    concurrency=args.concurrency, queue_size=args.queue_size, defaults=defaults,
                    auth=load_credentials(args.auth, args.auth_file, env=auth_env), insecure=args.insecure,
                    debug=args.debug, cache_ttl=args.cache_ttl, api_key=settings.openai_api_key)


def main(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    try:
        config = config_from_args(args)
    except ValidationError as exc:
        raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None

    from agent.ui.app import find_examples, launch_app
    from agent.ui.auth import check_exposure

    check_exposure(config.host, bool(config.auth), config.insecure)  # before anything loads or binds
    find_examples(config.examples)  # a wrong --examples path fails now, with its name
    if args.auth:
        print(f"note: --auth is visible to other users of this machine (ps); prefer --auth-file or ${AUTH_ENV}",
              file=sys.stderr)
    preload = not args.no_preload and config.defaults.planner == "offline"
    if preload:
        print(f"loading the {config.defaults.backend} segmenter ...", flush=True)
    launch_app(config, block=True, preload=preload)
    return 0
