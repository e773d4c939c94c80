"""Converting the network's parts (PyTorch modules) to the fast runtimes once, and PyTorch itself as a runtime.

The runtimes and how a converted part is found and loaded without PyTorch: segmenter/lite/runtime.py. Here a
part is traced once into its cache folder (``runtime.part_folder``), checked once against PyTorch on a test
input (a ``checked`` stamp says it passed), then loaded like any cached part. A runtime that is missing or
fails falls back to PyTorch with a one-line warning: a part never stops the segmenter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segmenter.lite.frame import MODEL_SIZE
from segmenter.lite.runtime import CHECKED, MODEL_FILES, Run, import_openvino, load_part, say

# relative L2 error of a conversion's outputs against PyTorch's; fp32 runtimes reach ~1e-6,
# OpenVINO's default bf16 on CPUs with bf16 units ~1e-2
MAX_RELATIVE_ERROR = 0.03


def encoder_test_input() -> torch.Tensor:
    """A fixed encoder input with image-like structure (smooth gradients and edges), the same on every machine."""
    g = torch.linspace(0, 1, MODEL_SIZE)
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    disc = (((yy - 0.5) ** 2 + (xx - 0.4) ** 2) < 0.06).float()
    return torch.stack([xx, 0.5 * disc + 0.3 * yy, disc])[None].float()


def part_test_input(kind: str, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    """Inputs of the fixed shapes a part is converted for, to trace and check it: "encoder" an image; "box"
    embeddings and one box; "gate" and "draw" embeddings and one phrase."""
    if kind == "encoder":
        return (encoder_test_input().to(device),)
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(1, 256, 64, 64, generator=g).to(device)
    if kind == "box":
        return embeddings, torch.tensor([[[40.0, 50.0, 200.0, 180.0]]], device=device)
    text = torch.nn.functional.normalize(torch.randn(1, 384, generator=g), dim=1).to(device)
    return embeddings, text


def torch_runner(module: nn.Module, bf16: bool = False) -> Run:
    """``module`` as a part: numpy in, numpy out, no grad, under bf16 autocast where ``bf16`` (CPUs with bf16
    units). PyTorch's own runtime: the reference, and the fallback."""
    device = next(module.parameters()).device

    def run(*xs: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = module(*(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device) for x in xs))
        outs = out if isinstance(out, tuple) else (out,)
        return tuple(o.float().cpu().numpy() for o in outs)

    return run


@contextmanager
def _tracing() -> Iterator[None]:
    """No grad, and quiet: both runtimes convert by torch.jit tracing, whose warnings (deprecation, shapes
    taken as constants: true here, shapes are fixed) are not the user's to act on. If a torch release
    drops tracing, the conversion fails and the segmenter falls back to PyTorch."""
    with torch.no_grad(), warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning, UserWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        yield


def _write_openvino(module: nn.Module, examples: tuple[torch.Tensor, ...], tmp: Path) -> None:
    ov = import_openvino()

    with _tracing():
        converted = ov.convert_model(module, example_input=examples)
    ov.save_model(converted, str(tmp / MODEL_FILES["openvino"]), compress_to_fp16=False)  # fp16 costs accuracy


def _write_onnx(module: nn.Module, examples: tuple[torch.Tensor, ...], tmp: Path) -> None:
    import onnxruntime  # noqa: F401 - fail before exporting where the runtime is missing

    with _tracing():
        torch.onnx.export(module, examples, str(tmp / MODEL_FILES["onnx"]), dynamo=False, opset_version=17)


WRITERS: dict[str, Callable[[nn.Module, tuple[torch.Tensor, ...], Path], None]] = {
    "openvino": _write_openvino, "onnx": _write_onnx}


def _checked_copy(module: nn.Module, runtime: str, test: tuple[torch.Tensor, ...], tmp: Path) -> None:
    """Write the conversion into ``tmp`` and stamp it once its output matches PyTorch's on ``test``."""
    WRITERS[runtime](module, test, tmp)
    (tmp / CHECKED).write_text("pending\n", encoding="utf-8")
    run = load_part(runtime, tmp)
    assert run is not None
    with torch.no_grad():
        reference = module(*test)
    reference = (reference[0] if isinstance(reference, tuple) else reference).float().numpy()
    error = float(np.linalg.norm(run(*(t.numpy() for t in test))[0] - reference)
                  / max(float(np.linalg.norm(reference)), 1e-12))
    if not error <= MAX_RELATIVE_ERROR:
        raise RuntimeError(f"its output differs from PyTorch's (relative error {error:.3g})")
    (tmp / CHECKED).write_text(f"{error:.3g}\n", encoding="utf-8")
    shutil.rmtree(tmp / "compiled", ignore_errors=True)  # compiled for the tmp path; recompiled where it lands


def _checked_copy_in_child(module: nn.Module, runtime: str, test: tuple[torch.Tensor, ...], tmp: Path) -> None:
    """``_checked_copy`` in a child process. OpenVINO's model converter reports usage to Google Analytics, from a
    process it forks, unless the user opted out (`opt_in_out --opt_out`) or ``CI`` is set: a fork from a process
    whose other threads are in BLAS can hang it (it did: the text model's matmul in the offline agent), and a
    clinician's machine should not report anything unasked. So the converter runs in a child with ``CI=true``."""
    job = tmp / "job.pt"
    torch.save({"module": module, "runtime": runtime, "test": test}, job)
    try:
        out = subprocess.run([sys.executable, "-m", "segmenter.lite.convert", str(job)],
                             env={**os.environ, "CI": "true"}, capture_output=True, text=True, timeout=3600)
    finally:
        job.unlink(missing_ok=True)
    if out.returncode != 0:
        raise RuntimeError((out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1])


def convert(runtime: str, module: nn.Module, test: tuple[torch.Tensor, ...], folder: Path, what: str) -> Run | None:
    """``module`` (fixed input shapes: ``test``'s) converted for ``runtime`` into ``folder`` once, checked against
    PyTorch, and loaded; None, with a one-line warning, where the runtime is missing or fails."""
    try:
        if not (folder / CHECKED).is_file():
            say(f"converting {what} for {runtime} once (about a minute on 2 cores); cached in {folder}")
            folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(folder, ignore_errors=True)  # an unchecked leftover of an interrupted conversion
            tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            try:
                _checked_copy_in_child(module.eval(), runtime, test, tmp)
                os.replace(tmp, folder)
            except OSError:
                if not (folder / CHECKED).is_file():  # another process may have won the race
                    raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return load_part(runtime, folder)
    except Exception as exc:  # a missing or failing runtime must never stop the segmenter
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        say(f"warning: {runtime} {what} unavailable ({type(exc).__name__}: {first_line}); using PyTorch")
        return None


if __name__ == "__main__":  # the child of _checked_copy_in_child: python -m segmenter.lite.convert <job.pt>
    job_path = Path(sys.argv[1])
    job = torch.load(job_path, weights_only=False)  # written by the parent a moment ago, never user input
    _checked_copy(job["module"], job["runtime"], job["test"], job_path.parent)
