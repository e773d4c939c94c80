"""`medsam3-agent`: one console command, one subcommand per job.

Each subcommand lives beside the code it drives and exposes ``configure(parser)`` and
``main(args) -> int``; ``COMMANDS`` is the one registry. Only the chosen subcommand's module is
imported, and heavy imports happen inside its ``main``, so ``--help`` stays fast. A subcommand
module that fails to import is a bug and fails loudly; a missing optional extra (gradio,
fastapi, monai, ...) is one line naming the ``pip install`` that brings it.
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
    "calibrate-presence": Command("segmenter.lite.calibrate_command",
                                  "per-concept presence thresholds of MedSAM3-Lite weights from a val cache"),
    "eval": Command("evals.cli", "benchmark over segmentation / reasoning sets"),
    "bench": Command("evals.bench", "speed and memory benchmark"),
    "ui": Command("agent.ui", "start the Gradio chat UI"),
    "serve-segmenter": Command("segmenter.service.command", "serve a segmenter backend over HTTP"),
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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that subcommand's module is imported (the others are listed by name).

    Without one every subcommand module is imported: a broken one raises here, it never vanishes.
    """
    parser = argparse.ArgumentParser(prog="medsam3-agent", description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, entry in COMMANDS.items():
        subparser = sub.add_parser(name, help=entry.help, description=entry.help)
        if command in (None, name):
            module = importlib.import_module(entry.module)
            module.configure(subparser)
            subparser.set_defaults(_main=module.main)
    return parser


def extra_hint(command: str, exc: ModuleNotFoundError) -> str | None:
    """One line naming the install that brings the missing package, or None when it is not an optional one."""
    extra = missing_extra(exc)
    if extra is None:
        return None
    return (f"medsam3-agent {command}: needs the [{extra}] extra ({exc.name} is not installed): "
            f"pip install 'medsam3-agent[{extra}]'")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    command = command if command in COMMANDS else ""  # "": --help or a typo; argparse answers without imports
    try:
        args = build_parser(command).parse_args(argv)
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        hint = extra_hint(command, exc)
        if hint is None:
            raise  # a core dependency or our own module is missing: a broken install, shown in full
        print(hint, file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError, TimeoutError) as exc:
        # user-facing failures (bad image, missing weights, endpoint down): one clear line, no traceback
        print(f"medsam3-agent {command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
