"""`medsam3-agent`: one console command, one subcommand per job.

Each subcommand lives beside the code it drives and exposes ``configure(parser)`` and
``main(args) -> int``; heavy imports happen inside ``main`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("agent.run_command", "answer a question about an image with masks"),
    "segment": ("segmenter.cli", "segment a concept (or boxes/points) in an image"),
    "train-lite": ("segmenter.lite.train_command", "train MedSAM3-Lite's concept head on ../shared/data"),
    "eval": ("evals.cli", "benchmark over segmentation / reasoning sets"),
    "bench": ("evals.bench", "speed and memory benchmark"),
    "ui": ("agent.ui", "start the Gradio chat UI"),
    "serve-segmenter": ("segmenter.server", "serve a segmenter backend over HTTP"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsam3-agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(module_name.split(".")[0]):
                continue  # a subcommand whose module is not part of this install yet
            raise
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(command)
        command.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError, RuntimeError, TimeoutError) as exc:
        # user-facing failures (bad image, missing weights, endpoint down): one clear line, no traceback
        print(f"medsam3-agent {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
