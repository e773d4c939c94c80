"""scripts/gpu_check.py in its CPU smoke mode: the same code path the GPU run takes, on a tiny config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_runs_the_backend_and_reports_timings():
    done = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--tiny", "--device", "cpu", "--dtype", "fp32", "--images", "2",
         "--warmup", "0", "--prompts", "polyp,lung"],
        capture_output=True, text=True, cwd=ROOT, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    summary = json.loads(out[out.index("{") : out.rindex("}") + 1])
    assert summary["images_timed"] == 2 and summary["prompts_per_image"] == 3  # two texts + one text+box
    assert summary["image_px"] == 224 and summary["ms_per_image"] > 0
    assert summary["lora"]["rank"] == 16 and summary["lora"]["modules"] == 2 * 4 + 1 * 4
    assert "ms / image" in out.splitlines()[-1]


def test_gpu_check_says_plainly_when_there_is_no_gpu():
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the full run is the check there")
    done = subprocess.run([sys.executable, "scripts/gpu_check.py"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, check=False)
    assert done.returncode == 2 and "no CUDA GPU" in done.stdout
