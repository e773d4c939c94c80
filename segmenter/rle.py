"""Masks as COCO run-length encodings (pycocotools): compact, JSON-safe, exact.

One codec for every place a mask is stored or sent: the agent's mask store keeps the plain dict,
the segmenter service sends it as the ``Rle`` model.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pydantic import BaseModel


class Rle(BaseModel):
    """COCO run-length encoding (column-major, as pycocotools writes it)."""

    size: tuple[int, int]  # (height, width)
    counts: str

    @classmethod
    def of(cls, mask: np.ndarray) -> Rle:
        return cls.model_validate(encode(mask))


def encode(mask: np.ndarray) -> dict[str, Any]:
    """bool (H, W) -> {"size": [H, W], "counts": str}."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode(rle: Mapping[str, Any] | Rle) -> np.ndarray:
    """The inverse of ``encode`` (a dict or an ``Rle``): a bool (H, W) array."""
    if isinstance(rle, Rle):
        rle = rle.model_dump()
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"not a COCO RLE (needs 'size' and 'counts'): {str(rle)[:80]}")
    counts = rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"]
    with warnings.catch_warnings():  # pycocotools' Cython decode warns about numpy 2's copy keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode({"size": list(rle["size"]), "counts": counts}).astype(bool)
