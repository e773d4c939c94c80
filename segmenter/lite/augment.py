"""Image degradations for images unlike the training set: another site's tone, optics and framing.

Two users: ``evals/shift.py`` renders a simulated other hospital for evaluation (tone and optics; the
masks stay), and ``train-lite --augment`` caches augmented copies of training images (tone, optics and
a new framing, applied to the masks too). The frozen encoder makes a copy cost one encode, so copies
are made once, in the embedding cache.

Framing is what one CT dataset alone teaches wrongly: AMOS's slices show a small body in a wide field
of view, 3D-IRCADb's a body that fills the frame. ``reframe`` zooms in on the content (the bounding box
of non-background pixels) or pads around it, so a concept is seen at other scales and positions. And AMOS
is unenhanced where most abdominal CT is contrast-enhanced: ``contrast_phase`` brightens the labelled organs
of a CT copy by a portal-venous enhancement scaled by a random phase.

``AUGMENT_VERSION`` is part of a copy's cache key: change it with anything here that changes a copy.
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

AUGMENT_VERSION = 2

# Approximate portal-venous enhancement over unenhanced CT, in HU (textbook ranges: liver +50-60, spleen
# +60-80, renal parenchyma +100-150); a CT window of width 400 maps 1 HU to 255 / 400 grey levels.
ENHANCEMENT_HU = {"liver": 55.0, "spleen": 70.0, "kidney": 120.0, "left kidney": 120.0, "right kidney": 120.0}
CT_WINDOW_WIDTH_HU = 400.0


def seeded_rng(name: str, key: str) -> np.random.Generator:
    """A generator fixed by a name and an item key: every run and process draws the same copy."""
    seed = int.from_bytes(hashlib.sha256(f"{name}\0{key}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed)


def is_grey(image: np.ndarray) -> bool:
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))


def tone(image: np.ndarray, rng: np.random.Generator, colour: bool) -> np.ndarray:
    """Colour cast, gamma, contrast and brightness, on floats in [0, 1]."""
    x = image.astype(np.float32) / 255.0
    if colour:
        x = x * rng.uniform(0.82, 1.18, size=3).astype(np.float32)
    x = np.clip(x, 0, 1) ** rng.uniform(0.7, 1.45)
    x = (x - 0.5) * rng.uniform(0.7, 1.25) + 0.5 + rng.uniform(-0.08, 0.08)
    return np.clip(x, 0, 1)


def vignette(x: np.ndarray, strength: float) -> np.ndarray:
    h, w = x.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2)) / np.sqrt(2)
    return x * (1 - strength * r**2)[..., None]


def optics(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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


def content_box(image: np.ndarray, background: int = 12) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) of the largest connected region brighter than ``background``: the body on a CT or MR
    slice (not the table under it), the whole frame of a photograph. The whole image when nothing is."""
    bright = (image.max(axis=2) > background).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    if count < 2:
        return 0, 0, image.shape[0], image.shape[1]
    x, y, w, h, _ = stats[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))]
    return int(y), int(x), int(y + h), int(x + w)


def reframe(
    image: np.ndarray, masks: dict[str, np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The same scene in another field of view: most often a square window around the content (zoomed in,
    its side 0.75-1.05x the content's longer side, shifted a little; it may cut the content's edges), else the
    whole image padded with background (zoomed out). Masks follow exactly (nearest neighbour)."""
    h, w = image.shape[:2]
    y0, x0, y1, x1 = content_box(image)
    if rng.random() < 0.7:
        side = max(16, round(max(y1 - y0, x1 - x0) * rng.uniform(0.75, 1.05)))
        cy = (y0 + y1) / 2 + rng.uniform(-0.08, 0.08) * side
        cx = (x0 + x1) / 2 + rng.uniform(-0.08, 0.08) * side
        top, left = round(cy - side / 2), round(cx - side / 2)
    else:
        side = round(max(h, w) * rng.uniform(1.1, 1.5))
        top = -round((side - h) * rng.uniform(0.2, 0.8))
        left = -round((side - w) * rng.uniform(0.2, 0.8))

    def window(array: np.ndarray) -> np.ndarray:
        # rows/cols outside the image read as background (zero)
        pad = [(max(0, -top), max(0, top + side - h)), (max(0, -left), max(0, left + side - w))]
        pad += [(0, 0)] * (array.ndim - 2)
        padded = np.pad(array, pad)
        r, c = top + pad[0][0], left + pad[1][0]
        return padded[r : r + side, c : c + side]

    # back to the source's longer side, so the letterbox sees a like-sized image
    size = max(h, w)
    out = cv2.resize(np.ascontiguousarray(window(image)), (size, size), interpolation=cv2.INTER_AREA)
    out_masks = {
        name: cv2.resize(window(m.astype(np.uint8)), (size, size), interpolation=cv2.INTER_NEAREST) > 0
        for name, m in masks.items()
    }
    return out, out_masks


def contrast_phase(image: np.ndarray, masks: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A windowed CT slice as a contrast phase would show it: each labelled organ of ``ENHANCEMENT_HU``
    brighter by its enhancement times one phase factor in [0, 1.2] (0: unenhanced, as acquired)."""
    phase = rng.uniform(0.0, 1.2)
    gain: np.ndarray = np.zeros(image.shape[:2], np.float32)
    for name, mask in masks.items():
        if name in ENHANCEMENT_HU:
            gain = np.maximum(gain, mask.astype(np.float32) * ENHANCEMENT_HU[name] * 255.0 / CT_WINDOW_WIDTH_HU)
    gain = cv2.GaussianBlur(gain * phase, (0, 0), 1.0)  # an organ's edge is not a step
    return np.clip(image.astype(np.float32) + gain[..., None], 0, 255).round().astype(np.uint8)


def augmented_copy(
    image: np.ndarray, masks: dict[str, np.ndarray], key: str, modality: str | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Training copy ``key`` of an HxWx3 uint8 image and its boolean masks: new framing, tone and optics
    (and for ``modality`` "ct" a contrast phase), drawn from ``key`` alone (deterministic). A grey image stays
    grey."""
    rng = seeded_rng("train-augment", key)
    grey = is_grey(image)
    if modality == "ct":
        image = contrast_phase(image, masks, rng)
    image, masks = reframe(image, masks, rng)
    x = tone(image, rng, colour=not grey)
    out = optics((x * 255).round().astype(np.uint8), rng)
    if grey:
        out = np.repeat(out[..., :1], 3, axis=2)
    return out, masks
