"""Display windows: CT presets in Hounsfield units, the concept -> preset table, and the percentile window.

A window maps values in [center - width/2, center + width/2] linearly to 0..255 (DICOM's linear VOI
function, simplified). CT presets are the usual radiology ones; anything that is not CT (MR, PET,
a NIfTI of unknown units) gets one 0.5-99.5 percentile window over the whole volume, so that every
slice of a volume is shown with the same mapping.
"""

from __future__ import annotations

import re

import numpy as np

from segmenter.image_io import ImageError
from segmenter.study import Window

# name -> (center, width) in HU
PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (40.0, 400.0),
    "liver": (30.0, 150.0),
    "brain": (40.0, 80.0),
    "bone": (400.0, 1800.0),
}
ALIASES = {"soft tissue": "mediastinum", "soft-tissue": "mediastinum", "softtissue": "mediastinum",
           "abdominal": "abdomen", "lungs": "lung", "head": "brain"}
DEFAULT_PRESET = "abdomen"

# a concept word -> the preset that shows it best; the first word found in the concept wins
CONCEPT_PRESETS: tuple[tuple[str, str], ...] = (
    ("lung", "lung"), ("nodule", "lung"), ("airway", "lung"),
    ("liver", "liver"), ("hepatic", "liver"),
    ("brain", "brain"), ("hemorrhage", "brain"), ("haemorrhage", "brain"),
    ("bone", "bone"), ("fracture", "bone"), ("vertebra", "bone"), ("rib", "bone"),
    ("heart", "mediastinum"), ("cardiomediastinum", "mediastinum"), ("mediastin", "mediastinum"),
    ("kidney", "abdomen"), ("spleen", "abdomen"), ("organ", "abdomen"), ("pancreas", "abdomen"),
)

PERCENTILES = (0.5, 99.5)
_MAX_PERCENTILE_SAMPLES = 4_000_000  # a regular subsample keeps percentiles of huge volumes fast


class WindowError(ImageError):
    """A window specification could not be understood; the message lists what is accepted."""


def preset(name: str) -> Window:
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in PRESETS:
        raise WindowError(f"unknown window preset {name[:40]!r}; use one of {', '.join(sorted(PRESETS))}, "
                          "'soft tissue', or 'center,width' in HU (e.g. '40,400')")
    center, width = PRESETS[key]
    return Window(center=center, width=width, name=key)


def parse_window(spec: str | Window | tuple[float, float]) -> Window:
    """A preset name, ``"center,width"`` (HU for CT), a ``(center, width)`` pair or a ``Window``."""
    if isinstance(spec, Window):
        return spec
    if isinstance(spec, tuple):
        center, width = spec
        return _custom(float(center), float(width))
    if not isinstance(spec, str):
        raise WindowError(f"window must be a preset name or 'center,width', got {type(spec).__name__}")
    numbers = re.fullmatch(r"\s*([-+]?\d+(?:\.\d+)?)\s*[,/:]\s*([-+]?\d+(?:\.\d+)?)\s*", spec)
    if numbers:
        return _custom(float(numbers.group(1)), float(numbers.group(2)))
    return preset(spec)


def _custom(center: float, width: float) -> Window:
    if not np.isfinite(center) or not np.isfinite(width) or width <= 0:
        raise WindowError(f"window width must be a positive number, got center {center}, width {width}")
    return Window(center=center, width=width, name="custom")


def preset_for_concept(concept: str | None) -> Window:
    """The CT preset that suits a concept ("left lung" -> lung); abdomen when nothing matches."""
    text = (concept or "").lower()
    for word, name in CONCEPT_PRESETS:
        if re.search(rf"\b{word}", text):  # at a word's start: "lungs" matches lung, "fibrosis" not rib
            return preset(name)
    return preset(DEFAULT_PRESET)


def percentile_window(values: np.ndarray) -> Window:
    """0.5-99.5 percentile window over all finite values of the whole volume (not per slice)."""
    flat = values.reshape(-1)
    if flat.size > _MAX_PERCENTILE_SAMPLES:
        flat = flat[:: flat.size // _MAX_PERCENTILE_SAMPLES + 1]
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return Window(center=0.0, width=1.0, name="percentile")
    lo, hi = (float(v) for v in np.percentile(flat, PERCENTILES))
    if hi <= lo:  # a near-constant volume: stretch its full range instead
        lo, hi = float(flat.min()), float(flat.max())
    if hi <= lo:
        return Window(center=lo, width=1.0, name="percentile")
    return Window(center=(lo + hi) / 2.0, width=hi - lo, name="percentile")


def apply_window(values: np.ndarray, window: Window, invert: bool = False) -> np.ndarray:
    """Values -> uint8 grey through the window; ``invert`` for MONOCHROME1 (low values shown white)."""
    lo = window.center - window.width / 2.0
    scaled = (values.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / window.width)
    grey = np.clip(scaled, 0, 255).round().astype(np.uint8)
    return 255 - grey if invert else grey
