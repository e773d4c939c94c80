"""Simulated acquisition shift for evaluation: ``medsam3-agent eval ... --shift other-hospital``.

We have no second hospital's images, so a run can degrade each image the way another site's camera,
processor and compression would: a colour cast (colour images only; a grey X-ray stays grey), gamma,
contrast and brightness, blur, a down-and-up rescale, a vignette and JPEG re-compression. The mix and
its strengths are drawn per case from a generator seeded by the shift's name and the case's image key,
so every run, process and worker sees the same shifted image. The degradations live in
``segmenter/lite/augment.py``, which training's augmented copies share. Only the image changes: its size and
dtype stay, and the masks are never touched (the evaluator scores against the original targets).
"""

from __future__ import annotations

import numpy as np

from segmenter.lite.augment import is_grey, optics, seeded_rng, tone, vignette

SHIFTS: tuple[str, ...] = ("other-hospital",)


def shift_image(image: np.ndarray, name: str, key: str) -> np.ndarray:
    """``image`` (HxWx3 uint8) as the shift ``name`` renders it for the case image ``key``: deterministic,
    same size and dtype, a new array (the input is left as it was)."""
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r}; choose from {', '.join(SHIFTS)}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"a shift takes an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    rng = seeded_rng(name, key)
    grey = is_grey(image)
    x = tone(image, rng, colour=not grey)
    if rng.random() < 0.5:
        x = vignette(x, rng.uniform(0.2, 0.5))
    out = optics((np.clip(x, 0, 1) * 255).round().astype(np.uint8), rng)
    if grey:  # JPEG's chroma rounding must not tint a grey image
        out = np.repeat(out[..., :1], 3, axis=2)
    return out
