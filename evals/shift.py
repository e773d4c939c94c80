"""Simulated acquisition shift for evaluation: ``medsam3-agent eval ... --shift other-hospital``.

We have no second hospital's images, so a run can degrade each image the way another site's camera,
processor and compression would: a colour cast (colour images only; a grey X-ray stays grey), gamma,
contrast and brightness, blur, a down-and-up rescale, a vignette and JPEG re-compression. The mix and
its strengths are drawn per case from a generator seeded by the shift's name and the case's image key,
so every run, process and worker sees the same shifted image. Only the image changes: its size and
dtype stay, and the masks are never touched (the evaluator scores against the original targets).
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

SHIFTS: tuple[str, ...] = ("other-hospital",)


def _rng(name: str, key: str) -> np.random.Generator:
    seed = int.from_bytes(hashlib.sha256(f"{name}\0{key}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed)


def _is_grey(image: np.ndarray) -> bool:
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))


def _tone(image: np.ndarray, rng: np.random.Generator, colour: bool) -> np.ndarray:
    """Colour cast, gamma, contrast and brightness, on floats in [0, 1]."""
    x = image.astype(np.float32) / 255.0
    if colour:
        x = x * rng.uniform(0.82, 1.18, size=3).astype(np.float32)
    x = np.clip(x, 0, 1) ** rng.uniform(0.7, 1.45)
    x = (x - 0.5) * rng.uniform(0.7, 1.25) + 0.5 + rng.uniform(-0.08, 0.08)
    return np.clip(x, 0, 1)


def _vignette(x: np.ndarray, strength: float) -> np.ndarray:
    h, w = x.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2)) / np.sqrt(2)
    return x * (1 - strength * r**2)[..., None]


def _optics(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, a down-and-up rescale (a smaller sensor or a resized video frame) and JPEG re-compression."""
    h, w = image.shape[:2]
    if rng.random() < 0.6:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.6, 1.8))
    if rng.random() < 0.6:
        f = rng.uniform(0.4, 0.8)
        small = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        image = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.8:
        ok, data = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 70))])
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR) if ok else None
        if decoded is not None:
            image = decoded[..., ::-1]
    return np.ascontiguousarray(image)


def shift_image(image: np.ndarray, name: str, key: str) -> np.ndarray:
    """``image`` (HxWx3 uint8) as the shift ``name`` renders it for the case image ``key``: deterministic,
    same size and dtype, a new array (the input is left as it was)."""
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r}; choose from {', '.join(SHIFTS)}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"a shift takes an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    rng = _rng(name, key)
    grey = _is_grey(image)
    x = _tone(image, rng, colour=not grey)
    if rng.random() < 0.5:
        x = _vignette(x, rng.uniform(0.2, 0.5))
    out = _optics((np.clip(x, 0, 1) * 255).round().astype(np.uint8), rng)
    if grey:  # JPEG's chroma rounding must not tint a grey image
        out = np.repeat(out[..., :1], 3, axis=2)
    return out
