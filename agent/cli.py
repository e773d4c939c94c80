"""`medsam3-agent`: one console command, one subcommand per job.

Each subcommand lives beside the code it drives and exposes ``configure(parser)`` and
``main(args) -> int``; heavy imports happen inside ``main`` so ``--help`` stays fast and needs
no optional extra. A subcommand module that fails to import is a bug and fails loudly; a
missing optional extra (gradio, fastapi, monai, ...) when a subcommand runs is one line naming
the ``pip install`` that brings it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple


class Command(NamedTuple):
    module: str  # exposes configure(parser) and main(args) -> int
    help: str


COMMANDS: dict[str, Command] = {
    "run": Command("agent.run_command", "answer a question about an image with masks"),
    "segment": Command("segmenter.cli", "segment a concept (or boxes/points) in an image"),
    "train-lite": Command("segmenter.lite.train_command", "train MedSAM3-Lite's concept head on ../shared/data"),
    "eval": Command("evals.cli", "benchmark over segmentation / reasoning sets"),
    "bench": Command("evals.bench", "speed and memory benchmark"),
    "ui": Command("agent.ui", "start the Gradio chat UI"),
    "serve-segmenter": Command("segmenter.server", "serve a segmenter backend over HTTP"),
}

# top-level import name -> the optional extra (pyproject.toml) that installs it
EXTRAS: dict[str, str] = {
    "gradio": "ui",
    "fastapi": "serve",
    "uvicorn": "serve",
    "starlette": "serve",
    "monai": "eval",
    "matplotlib": "eval",
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The extra whose package ``exc`` could not import, or None when it is not an optional package."""
    return EXTRAS.get((exc.name or "").split(".")[0])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsam3-agent", description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        module = importlib.import_module(command.module)  # no fallback: a broken subcommand must not vanish
        subparser = sub.add_parser(name, help=command.help, description=command.help)
        module.configure(subparser)
        subparser.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        extra = missing_extra(exc)
        if extra is None:
            raise  # a core dependency or our own module is missing: a broken install, shown in full
        print(f"medsam3-agent {args.command}: needs the [{extra}] extra ({exc.name} is not installed): "
              f"pip install 'medsam3-agent[{extra}]'", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError, TimeoutError) as exc:
        # user-facing failures (bad image, missing weights, endpoint down): one clear line, no traceback
        print(f"medsam3-agent {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
