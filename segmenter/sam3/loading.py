"""Load transformers' ``Sam3Model`` + ``Sam3Processor``: device and dtype choice, clear errors."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but this torch sees no CUDA GPU; use device='cpu'")
    return chosen


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on GPUs that support it, else fp16; fp32 on CPU (CPU half precision is slow and lossy)."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be auto, bf16, fp16 or fp32, got {dtype!r}")
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _looks_local(name: str) -> bool:
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1


def load_sam3(model: str, device: torch.device, dtype: torch.dtype):
    """``(Sam3Model, Sam3Processor)`` from a local folder or a hub id (the latter needs the hub to be reachable)."""
    from transformers import Sam3Model, Sam3Processor

    if _looks_local(model):
        folder = Path(model).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"SAM 3 model folder not found: {folder}")
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder} has no config.json: expected a transformers SAM 3 checkpoint "
                "(e.g. a download of facebook/sam3, or the output of transformers' convert_sam3_to_hf.py)"
            )
        model = str(folder)
    try:
        processor = Sam3Processor.from_pretrained(model)
        net = Sam3Model.from_pretrained(model, dtype=dtype)
    except OSError as exc:
        raise RuntimeError(
            f"could not load SAM 3 from {model!r}: {exc}. Without hub access, download the checkpoint "
            "elsewhere and pass its local folder."
        ) from exc
    if net.config.model_type != "sam3":
        raise ValueError(f"{model!r} is a {net.config.model_type!r} checkpoint, not SAM 3 (model_type 'sam3')")
    # transformers' PreTrainedModel.to is wrapped by a decorator whose stub types `self` as the first argument
    return net.to(device).eval(), processor  # type: ignore[arg-type]
