"""The TinyViT image encoder (and the one-prompt decoders, see backend.py) on a faster CPU runtime,
with plain PyTorch kept as the reference.

``MEDSAM3_ENCODER`` (or ``LiteBackend(encoder=...)``) picks the runtime:

* ``torch``: the reference, LiteMedSAM's own module (bf16 autocast where the CPU has bf16 units).
* ``openvino``: the module converted once to OpenVINO IR (fp32 weights) and run by its CPU plugin.
  About 3x faster than PyTorch on a 2-core AVX2 EPYC; the ``auto`` choice on CPU.
* ``onnx``: exported once to ONNX and run by ONNX Runtime, if ``onnxruntime`` is installed (it is
  not a dependency): about 2.5x faster than PyTorch there, slower than OpenVINO.
* ``auto`` (default): ``openvino`` on CPU, ``torch`` on a GPU.

A conversion is cached in ``MEDSAM3_CACHE_DIR`` (default ``~/.cache/medsam3-agent``) under the
hash of the encoder's weights and the runtime's version, so new weights get a new conversion. It
is checked once against PyTorch on a test input before it is kept. A runtime that is missing or
fails falls back to PyTorch with a one-line warning: the encoder never stops the segmenter.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segmenter.lite.model import MODEL_SIZE

ENCODER_ENV = "MEDSAM3_ENCODER"
CACHE_ENV = "MEDSAM3_CACHE_DIR"
CHOICES = ("auto", "torch", "openvino", "onnx")
# relative L2 error of a conversion's embeddings against PyTorch's; fp32 runtimes reach ~1e-6,
# OpenVINO's default bf16 on CPUs with bf16 units ~1e-2
MAX_RELATIVE_ERROR = 0.03

Encode = Callable[[torch.Tensor], torch.Tensor]  # (1, 3, 256, 256) float -> (1, 256, 64, 64) float
Run = Callable[..., tuple[torch.Tensor, ...]]  # a converted module: its inputs -> its outputs


def _say(text: str) -> None:
    print(f"medsam3-agent: {text}", file=sys.stderr, flush=True)


def resolve_choice(choice: str | None = None) -> str:
    """The requested runtime: ``choice``, else ``MEDSAM3_ENCODER``, else ``auto``; a ValueError names the choices."""
    value = (choice if choice is not None else os.environ.get(ENCODER_ENV) or "auto").strip().lower()
    if value not in CHOICES:
        raise ValueError(f"unknown image encoder runtime {value[:40]!r}; choose {', '.join(CHOICES)}")
    return value


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medsam3-agent"


def weights_hash(module: nn.Module) -> str:
    """SHA-256 of the module's parameters and buffers (names, shapes, bytes): the conversion's cache key."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:20]


def _test_input() -> torch.Tensor:
    """A fixed input with image-like structure (smooth gradients and edges), the same on every machine."""
    g = torch.linspace(0, 1, MODEL_SIZE)
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    disc = (((yy - 0.5) ** 2 + (xx - 0.4) ** 2) < 0.06).float()
    return torch.stack([xx, 0.5 * disc + 0.3 * yy, disc])[None].float()


def torch_encoder(module: nn.Module, bf16: bool = False) -> Encode:
    """The reference: PyTorch's module, under bf16 autocast where ``bf16`` (CPUs with bf16 units)."""
    device = next(module.parameters()).device

    def encode(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return module(x.to(device)).float()

    return encode


def _convert_once(target: Path, write: Callable[[Path], None], what: str) -> None:
    """Run ``write(tmp_dir)`` and move the folder to ``target`` atomically (another process may win the race)."""
    if target.is_dir():
        return
    _say(f"converting {what} once (about a minute on 2 cores); cached in {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _tracing() -> Iterator[None]:
    """No grad, and quiet: both runtimes convert by torch.jit tracing, whose warnings (deprecation, shapes
    taken as constants: true here, shapes are fixed) are not the user's to act on. If a torch release
    drops tracing, the conversion fails and the segmenter falls back to PyTorch."""
    with torch.no_grad(), warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning, UserWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        yield


def _numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)


def _openvino(module: nn.Module, examples: tuple[torch.Tensor, ...], folder: Path, what: str) -> tuple[Run, Path]:
    import openvino as ov

    target = folder / f"openvino-{ov.get_version().split('-')[0]}"

    def write(tmp: Path) -> None:
        with _tracing():
            converted = ov.convert_model(module, example_input=examples)
        ov.save_model(converted, str(tmp / "model.xml"), compress_to_fp16=False)  # fp16 weights cost accuracy

    _convert_once(target, write, f"{what} for OpenVINO")
    # CACHE_DIR keeps the compiled blob too: the next load compiles in a third of the time
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": torch.get_num_threads(),
              "CACHE_DIR": str(target / "compiled")}
    compiled = ov.Core().compile_model(str(target / "model.xml"), "CPU", config)
    request = compiled.create_infer_request()
    lock = threading.Lock()  # one infer request: its output buffers are reused by the next call

    def run(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with lock:
            out = request.infer({i: _numpy(x) for i, x in enumerate(xs)})
            return tuple(torch.from_numpy(np.array(out[o], dtype=np.float32, copy=True)) for o in compiled.outputs)

    return run, target


def _onnx(module: nn.Module, examples: tuple[torch.Tensor, ...], folder: Path, what: str) -> tuple[Run, Path]:
    import onnxruntime as ort

    target = folder / f"onnx-torch{torch.__version__.split('+')[0]}"

    def write(tmp: Path) -> None:
        with _tracing():
            torch.onnx.export(module, examples, str(tmp / "model.onnx"), dynamo=False, opset_version=17)

    _convert_once(target, write, f"{what} for ONNX Runtime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(target / "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(o) for o in session.run(None, dict(zip(names, map(_numpy, xs), strict=True))))

    return run, target


BUILDERS: dict[str, Callable[[nn.Module, tuple[torch.Tensor, ...], Path, str], tuple[Run, Path]]] = {
    "openvino": _openvino, "onnx": _onnx}


def _checked(module: nn.Module, run: Run, folder: Path, test: tuple[torch.Tensor, ...]) -> Run:
    """Compare a conversion with PyTorch once (a stamp in its cache folder says it passed); a wrong one raises."""
    stamp = folder / "checked"
    if stamp.is_file():
        return run
    with torch.no_grad():
        reference = module(*test)
    reference = reference[0] if isinstance(reference, tuple) else reference
    error = float((run(*test)[0] - reference).norm() / reference.norm().clamp_min(1e-12))
    if not error <= MAX_RELATIVE_ERROR:
        raise RuntimeError(f"its output differs from PyTorch's (relative error {error:.3g})")
    stamp.write_text(f"{error:.3g}\n")
    return run


def _runtime(choice: str | None, device: torch.device, what: str) -> str:
    """The runtime to try for ``choice`` on ``device``: ``torch`` where only PyTorch can run."""
    name = resolve_choice(choice)
    if name == "auto":
        name = "openvino" if device.type == "cpu" else "torch"
    if name != "torch" and device.type != "cpu":
        _say(f"warning: the {name} {what} runs on CPU only; using PyTorch on {device}")
        return "torch"
    return name


def convert(name: str, module: nn.Module, test: tuple[torch.Tensor, ...], what: str) -> Run | None:
    """``module`` on runtime ``name`` (fixed input shapes: ``test``'s), converted once per weights hash and checked
    against PyTorch; None, with a one-line warning, where the runtime is missing or fails."""
    try:
        folder = cache_root() / what.replace(" ", "-") / weights_hash(module)
        run, target = BUILDERS[name](module.eval(), test, folder, what)
        return _checked(module, run, target, test)
    except Exception as exc:  # a missing or failing runtime must never stop the segmenter
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        _say(f"warning: {name} {what} unavailable ({type(exc).__name__}: {first_line}); using PyTorch")
        return None


def build_runner(module: nn.Module, device: torch.device, choice: str | None, test: tuple[torch.Tensor, ...],
                 what: str) -> tuple[str, Run | None]:
    """(runtime used, ``module`` converted for ``choice``); ("torch", None) where PyTorch itself is to run it."""
    name = _runtime(choice, device, what)
    run = None if name == "torch" else convert(name, module, test, what)
    return ("torch", None) if run is None else (name, run)


def build_encoder(module: nn.Module, device: torch.device, choice: str | None = None,
                  bf16: bool = False) -> tuple[str, Encode]:
    """(runtime used, encode function) for ``choice`` (see ``resolve_choice``); PyTorch where the choice cannot run."""
    name, run = build_runner(module, device, choice, (_test_input(),), "image encoder")
    if run is None:
        return "torch", torch_encoder(module, bf16)
    return name, lambda x: run(x)[0]
