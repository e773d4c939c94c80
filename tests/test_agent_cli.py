"""`medsam3-agent run`: the offline default on a real image, and clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import val_rows
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", "run", *args], capture_output=True, text=True,
                          check=False, timeout=timeout, cwd=ROOT)


def test_run_writes_overlay_masks_and_result_json(tmp_path):
    row = val_rows("kvasir_seg", limit=1)[0]
    done = cli(str(row["image"]), "find the polyps", "--out", str(tmp_path / "out"), "--planner", "offline")
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "out"
    data = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert data["planner"] == "offline" and data["concepts_tried"][0] == "polyp"
    assert data["answer"] in done.stdout and "offline planner" in data["answer"]
    width, height = Image.open(row["image"]).size
    assert Image.open(out / "overlay.png").size == (width, height)
    assert isinstance(data["masks"], list)
    for entry in data["masks"]:
        assert entry["concept"] == "polyp"
        union = np.asarray(Image.open(out / entry["path"]))
        assert union.shape == (height, width) and set(np.unique(union)) <= {0, 255}
        parts = [np.asarray(Image.open(out / inst["path"])) > 0 for inst in entry["instances"]]
        assert np.array_equal(np.logical_or.reduce(parts), union > 0)


def test_missing_image_is_a_one_line_error(tmp_path):
    done = cli(str(tmp_path / "nope.png"), "find the polyps", "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "no such image file" in done.stderr and "Traceback" not in done.stderr


def test_thread_id_needs_a_checkpoint_db(tmp_path):
    done = cli("x.png", "find the polyps", "--out", str(tmp_path), "--thread-id", "t1")
    assert done.returncode == 2 and "--checkpoint-db" in done.stderr
