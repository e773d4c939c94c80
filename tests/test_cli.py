"""`medsam3-agent`: one registry of subcommands, each with configure(parser) and main(args); a broken
subcommand import fails loudly; a missing optional extra is one line naming the pip install."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.cli import COMMANDS, EXTRAS, build_parser

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = sorted(EXTRAS)  # every package an extra brings

# Run in a fresh interpreter: a meta-path finder that makes the named modules unimportable, as on
# an install without them, then the real console entry point.
BLOCKED_RUN = """
import importlib.abc, sys
blocked = set(sys.argv[1].split(","))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in blocked or name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
from agent.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_blocked(blocked: list[str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED_RUN, ",".join(blocked), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout, check=False)


def test_every_subcommand_has_configure_and_main():
    for name, command in COMMANDS.items():
        module = importlib.import_module(command.module)
        assert callable(module.configure) and callable(module.main), name


@pytest.mark.parametrize("name", ["", *COMMANDS])
def test_help_works_for_the_command_and_each_subcommand(name, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([name, "--help"] if name else ["--help"])
    assert done.value.code == 0
    assert "usage: medsam3-agent" in capsys.readouterr().out


def test_help_needs_no_optional_extra():
    done = run_blocked(OPTIONAL, "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(name in done.stdout for name in COMMANDS)
    for name in COMMANDS:  # each subcommand: its usage, or the one line naming the extra its module needs
        sub = run_blocked(OPTIONAL, name, "--help")
        hint = sub.stderr.strip().splitlines()
        assert (sub.returncode == 0 and "usage:" in sub.stdout) or (
            sub.returncode == 2 and len(hint) == 1 and "pip install 'medsam3-agent[" in hint[0]), (name, sub.stderr)


def test_serve_segmenter_help_needs_no_serve_extra():
    """Its usage and limit defaults, not the install hint: fastapi/uvicorn/starlette load only in main."""
    done = run_blocked(OPTIONAL, "serve-segmenter", "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: medsam3-agent serve-segmenter" in done.stdout
    text = " ".join(done.stdout.split())  # argparse wraps to the terminal's width
    assert "--max-upload-mb" in text and "(default 20)" in text


def test_the_core_install_answers_offline_without_any_extra(tmp_path):
    """`run` imports nothing from [ui], [serve] or [eval]: the lean core does the main job."""
    image = tmp_path / "x.png"
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(image)
    done = run_blocked(OPTIONAL, "run", str(image), "find the polyps", "--out", str(tmp_path / "out"),
                       "--planner", "offline", "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "result.json").is_file()


@pytest.mark.parametrize(("args", "extra"), [
    (["ui", "--no-preload", "--port", "0"], "ui"),
    (["serve-segmenter", "--port", "0"], "serve"),
])
def test_a_missing_extra_is_one_line_naming_the_install(args, extra):
    done = run_blocked(OPTIONAL, *args)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install 'medsam3-agent[{extra}]'" in lines[0], done.stderr[-2000:]


def test_a_broken_subcommand_import_fails_loudly():
    """A subcommand module that cannot import is a bug: the command stops and names it, never drops it."""
    done = run_blocked(["evals.bench"], "bench", "--help")
    assert done.returncode != 0 and "evals.bench" in done.stderr
    assert "Traceback" in done.stderr


def test_a_missing_core_package_is_not_disguised_as_an_extra(tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (16, 16)).save(image)
    done = run_blocked(["openai"], "run", str(image), "q", "--out", str(tmp_path / "out"), "--planner", "openai",
                       "--model", "m")
    assert done.returncode != 0 and "pip install 'medsam3-agent[" not in done.stderr
    assert "openai" in done.stderr


def test_extras_in_pyproject_match_the_hints():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    core = " ".join(project["dependencies"])
    provided_by = {"starlette": "fastapi"}  # starlette comes with fastapi
    for package, extra in EXTRAS.items():
        wanted = provided_by.get(package, package)
        assert any(req.startswith(wanted) for req in extras[extra]), (package, extra)
        assert wanted not in core, f"{wanted} is optional: it belongs to [{extra}], not the core"
    test = " ".join(extras["test"])
    assert "medsam3-agent[ui,serve,eval,ray]" in test and "mypy" in test and "pytest" in test
