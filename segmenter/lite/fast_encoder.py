"""The TinyViT image encoder on a faster CPU runtime, with plain PyTorch kept as the reference.

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
from collections.abc import Callable
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


def _convert_once(target: Path, write: Callable[[Path], None], runtime: str) -> None:
    """Run ``write(tmp_dir)`` and move the folder to ``target`` atomically (another process may win the race)."""
    if target.is_dir():
        return
    _say(f"converting the image encoder for {runtime} once (about a minute on 2 cores); cached in {target}")
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


def _openvino(module: nn.Module, folder: Path) -> tuple[Encode, Path]:
    import openvino as ov

    target = folder / f"openvino-{ov.get_version().split('-')[0]}"
    example = torch.zeros(1, 3, MODEL_SIZE, MODEL_SIZE)

    def write(tmp: Path) -> None:
        with torch.no_grad():
            converted = ov.convert_model(module, example_input=example)
        ov.save_model(converted, str(tmp / "encoder.xml"), compress_to_fp16=False)  # fp16 weights cost accuracy

    _convert_once(target, write, "OpenVINO")
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    compiled = ov.Core().compile_model(str(target / "encoder.xml"), "CPU", config)
    request = compiled.create_infer_request()
    lock = threading.Lock()  # one infer request: its output buffer is reused by the next call

    def encode(x: torch.Tensor) -> torch.Tensor:
        with lock:
            out = request.infer({0: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})
            return torch.from_numpy(np.array(out[compiled.output(0)], dtype=np.float32, copy=True))

    return encode, target


def _onnx(module: nn.Module, folder: Path) -> tuple[Encode, Path]:
    import onnxruntime as ort

    target = folder / f"onnx-torch{torch.__version__.split('+')[0]}"

    def write(tmp: Path) -> None:
        with torch.no_grad():
            torch.onnx.export(module, (torch.zeros(1, 3, MODEL_SIZE, MODEL_SIZE),), str(tmp / "encoder.onnx"),
                              dynamo=False, opset_version=17, input_names=["image"], output_names=["embeddings"])

    _convert_once(target, write, "ONNX Runtime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(target / "encoder.onnx"), options, providers=["CPUExecutionProvider"])

    def encode(x: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {"image": np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(out)

    return encode, target


BUILDERS: dict[str, Callable[[nn.Module, Path], tuple[Encode, Path]]] = {"openvino": _openvino, "onnx": _onnx}


def _checked(module: nn.Module, encode: Encode, folder: Path) -> Encode:
    """Compare a conversion with PyTorch once (a stamp in its cache folder says it passed); a wrong one raises."""
    stamp = folder / "checked"
    if stamp.is_file():
        return encode
    x = _test_input()
    reference = torch_encoder(module)(x)
    error = float((encode(x) - reference).norm() / reference.norm().clamp_min(1e-12))
    if not error <= MAX_RELATIVE_ERROR:
        raise RuntimeError(f"its embeddings differ from PyTorch's (relative error {error:.3g})")
    stamp.write_text(f"{error:.3g}\n")
    return encode


def build_encoder(module: nn.Module, device: torch.device, choice: str | None = None,
                  bf16: bool = False) -> tuple[str, Encode]:
    """(runtime used, encode function) for ``choice`` (see ``resolve_choice``); PyTorch where the choice cannot run."""
    name = resolve_choice(choice)
    if name == "auto":
        name = "openvino" if device.type == "cpu" else "torch"
    if name == "torch":
        return "torch", torch_encoder(module, bf16)
    if device.type != "cpu":
        _say(f"warning: the {name} image encoder runs on CPU only; using PyTorch on {device}")
        return "torch", torch_encoder(module, bf16)
    try:
        folder = cache_root() / "encoder" / weights_hash(module)
        encode, target = BUILDERS[name](module.eval(), folder)
        return name, _checked(module, encode, target)
    except Exception as exc:  # a missing or failing runtime must never stop the segmenter
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        _say(f"warning: {name} image encoder unavailable ({type(exc).__name__}: {first_line}); using PyTorch")
        return "torch", torch_encoder(module, bf16)
