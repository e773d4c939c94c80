"""The model's square 256 frame: images go in letterboxed, mask logits come back at the image's size.

NumPy and OpenCV only, so that the offline segmenter can run without importing PyTorch (segmenter/lite/runtime.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MODEL_SIZE = 256  # LiteMedSAM's input side; embeddings are 64x64
EMBED_GRID = 64


@dataclass(frozen=True)
class Letterbox:
    """How an image was resized and padded into the model's square input."""

    height: int
    width: int
    scale: float  # model pixels per image pixel

    @property
    def new_size(self) -> tuple[int, int]:
        return int(round(self.height * self.scale)), int(round(self.width * self.scale))


def _fit(height: int, width: int, size: int) -> tuple[float, int, int]:
    """(scale, new height, new width) of an image whose longest side goes to ``size``."""
    scale = size / max(height, width)
    return scale, max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def letterbox(image: np.ndarray, size: int = MODEL_SIZE) -> tuple[np.ndarray, Letterbox]:
    """LiteMedSAM preprocessing: longest side -> ``size``, min-max to [0,1], pad bottom/right.
    Returns (3, size, size) float32 and the geometry."""
    h, w = image.shape[:2]
    scale, nh, nw = _fit(h, w, size)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(image, (nw, nh), interpolation=interp).astype(np.float32)
    lo, hi = float(resized.min()), float(resized.max())
    resized = (resized - lo) / max(hi - lo, 1e-8)
    padded = np.zeros((size, size, 3), dtype=np.float32)
    padded[:nh, :nw] = resized
    return np.ascontiguousarray(padded.transpose(2, 0, 1)), Letterbox(height=h, width=w, scale=scale)


def letterbox_mask(mask: np.ndarray, size: int = MODEL_SIZE) -> np.ndarray:
    """A binary mask put through the same geometry as ``letterbox`` (nearest neighbour)."""
    _, nh, nw = _fit(mask.shape[0], mask.shape[1], size)
    resized = cv2.resize((mask > 0).astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST)
    out = np.zeros((size, size), dtype=np.uint8)
    out[:nh, :nw] = resized
    return out


def tile_windows(height: int, width: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Windows (y0, x0, y1, x1) of side ``tile`` covering the image, evenly overlapping."""

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        count = -(-n // tile)  # ceil
        step = (n - tile) / (count - 1)
        return [int(round(i * step)) for i in range(count)]

    return [
        (y, x, min(y + tile, height), min(x + tile, width)) for y in starts(height) for x in starts(width)
    ]


def unletterbox_logits(logits: np.ndarray, box: Letterbox) -> np.ndarray:
    """(N, 1, 256, 256) model-frame logits -> (N, H, W) logits at the image's own size (bilinear, pixel
    centres aligned: PyTorch's ``interpolate(..., align_corners=False)``)."""
    nh, nw = box.new_size
    cropped = logits[:, 0, :nh, :nw].astype(np.float32)
    return np.stack([cv2.resize(c, (box.width, box.height), interpolation=cv2.INTER_LINEAR) for c in cropped])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))).astype(np.float32)
