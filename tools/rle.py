"""Masks as COCO run-length encodings (pycocotools): compact, JSON-safe, exact."""

from __future__ import annotations

import warnings

import numpy as np
from pycocotools import mask as mask_utils


def encode(mask: np.ndarray) -> dict:
    """bool (H, W) -> {"size": [H, W], "counts": str}."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode(rle: dict) -> np.ndarray:
    """The inverse of ``encode``: a bool (H, W) array."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"not a COCO RLE (needs 'size' and 'counts'): {str(rle)[:80]}")
    counts = rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"]
    with warnings.catch_warnings():  # pycocotools' Cython decode warns about numpy 2's copy keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode({"size": list(rle["size"]), "counts": counts}).astype(bool)
