"""Measurements on masks, in physical units where the geometry says how big a pixel is.

Pure functions over boolean masks ((H, W) for an image, (S, H, W) for a volume) and a
``segmenter.study.Geometry``. Every ``Measurement`` names its unit; without a pixel spacing, sizes
are in pixels and % of the image, and ``spacing_known`` is False so the wording can say so.

Diameters follow the mask's outline (its convex hull, via OpenCV), not its bounding box: the
longest diameter is the widest distance across the hull, the perpendicular one the longest chord
of the hull at right angles to it (the bidimensional, RECIST-style pair). Extents count whole
pixels (edge to edge: the centres' span plus one pixel), so a one-pixel-wide structure is one pixel wide.

Ratios: the vertical cup-to-disc ratio (the optic cup's vertical extent over the optic disc's) and
the cardiothoracic ratio (a PA chest X-ray: the cardiomediastinum's widest horizontal extent over
the widest internal horizontal extent of the thorax, taken row by row across the union of the lung
masks). Both are dimensionless, so they need no spacing.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel

from segmenter.study import Geometry

MeasureKind = Literal["area", "longest diameter", "perpendicular diameter", "volume", "count",
                      "cup-to-disc ratio", "cardiothoracic ratio"]
MeasureWhat = Literal["area", "diameter", "volume", "count", "cdr", "ctr"]

# Thresholds stated beside a ratio (a reference point for the reader, not a diagnosis).
CTR_THRESHOLD = 0.5  # a PA chest X-ray's CTR above this is usually called enlarged
CDR_THRESHOLD = 0.6  # a vertical CDR at or above this is usually flagged for follow-up

RATIO_BASIS = {"cup-to-disc ratio": "the optic cup's vertical extent over the optic disc's",
               "cardiothoracic ratio": "the cardiomediastinum's widest horizontal extent over the thorax's, "
                                       "from the lung masks"}

LUNG_CONCEPTS = ("lung", "left lung", "right lung")
HEART_CONCEPTS = ("cardiomediastinum",)
DISC_CONCEPTS = ("optic disc",)
CUP_CONCEPTS = ("optic cup",)


class Measurement(BaseModel):
    """One number about one instance (``ids`` = [its id]), one concept (all its ids) or a ratio of two."""

    kind: MeasureKind
    concept: str  # the concept measured; for a ratio "optic cup / optic disc"
    ids: list[int] = []  # the candidate ids it was computed from
    value: float
    unit: str  # "mm²", "mm", "mL", "px", "px²", "voxels", "instances", "ratio"
    spacing_known: bool = True  # False: sizes are in pixels because the image has no pixel spacing
    pixels: float | None = None  # the same size in pixels (area: px², diameters: px, volume: voxels)
    percent_of_image: float | None = None  # areas: share of the image (or of one slice, for a volume)
    threshold: float | None = None  # ratios: the usual reference value
    slice_index: int | None = None  # a size read on one slice of a volume (its largest)

    @property
    def text(self) -> str:
        """The measurement in words, units stated ("optic disc area 2.31 mm² (1,024 px, 3.4% of the image)")."""
        if self.unit == "ratio":
            return f"{self.kind} {self.value:.2f} ({RATIO_BASIS[self.kind]}), {self.threshold_words()}"
        if self.kind == "count":
            return f"{self.concept}: {int(self.value)} {'instance' if self.value == 1 else 'instances'}"
        return f"{self.concept} {self.short}"

    @property
    def short(self) -> str:
        """A size without its concept ("area 2.31 mm² (1,024 px, 3.4% of the image)")."""
        extra = []
        if self.spacing_known and self.pixels is not None:
            extra.append(f"{_number(self.pixels)} {'voxels' if self.kind == 'volume' else 'px'}")
        if self.percent_of_image is not None:
            extra.append(f"{self.percent_of_image:.1f}% of the {'slice' if self.slice_index is not None else 'image'}")
        if self.slice_index is not None:
            extra.append(f"on slice {self.slice_index}")
        return f"{self.kind} {_number(self.value)} {self.unit}" + (f" ({', '.join(extra)})" if extra else "")

    @property
    def sentence(self) -> str:
        """A ratio as a sentence: "The cardiothoracic ratio is 0.52 (...), above the usual 0.5 threshold."."""
        return f"The {self.kind} is {self.value:.2f} ({RATIO_BASIS[self.kind]}), {self.threshold_words()}."

    def threshold_words(self) -> str:
        """Where a ratio stands against its usual reference value (``above the usual 0.5 threshold``)."""
        if self.threshold is None:
            return ""
        if self.kind == "cup-to-disc ratio":
            side = "at or above" if self.value >= self.threshold else "below"
        else:
            side = "above" if self.value > self.threshold else "at or below"
        return f"{side} the usual {self.threshold:g} threshold"


def _number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _plane(mask: np.ndarray) -> tuple[np.ndarray, int | None]:
    """The 2D mask to measure a size on: the mask itself, or a volume's slice of largest area."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim == 2:
        return mask, None
    if mask.ndim != 3:
        raise ValueError(f"a mask must be (H, W) or (S, H, W), got shape {mask.shape}")
    index = int(mask.reshape(mask.shape[0], -1).sum(axis=1).argmax())
    return mask[index], index


def _spacing(geometry: Geometry) -> tuple[float, float]:
    return geometry.pixel_spacing or (1.0, 1.0)


def area(mask: np.ndarray, geometry: Geometry, concept: str = "", ids: list[int] | None = None) -> Measurement:
    """The mask's area: mm² with a spacing (else px²), with its pixel count and share of the image."""
    plane, index = _plane(mask)
    pixels = int(plane.sum())
    known = geometry.pixel_area_mm2 is not None
    value = pixels * geometry.pixel_area_mm2 if geometry.pixel_area_mm2 is not None else float(pixels)
    return Measurement(kind="area", concept=concept, ids=ids or [], value=value, unit="mm²" if known else "px²",
                       spacing_known=known, pixels=pixels, percent_of_image=100.0 * pixels / max(plane.size, 1),
                       slice_index=index)


def _hull_points(plane: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """The convex hull's vertices as (row, col) in millimetres (pixels when spacing is (1, 1))."""
    contours, _ = cv2.findContours(plane.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    points = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float64)  # (x, y) = (col, row)
    hull = cv2.convexHull(points.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    return np.stack([hull[:, 1] * spacing[0], hull[:, 0] * spacing[1]], axis=1)


def _pitch(direction: np.ndarray, spacing: tuple[float, float]) -> float:
    """The length of one pixel step along a unit (row, col) direction in mm: an object's edge lies about
    half a step beyond its outermost pixel centres, so an extent is its centre-to-centre span plus one step."""
    return 1.0 / float(np.hypot(direction[0] / spacing[0], direction[1] / spacing[1]))


def _longest_chord_across(hull: np.ndarray, axis: np.ndarray, samples: int = 512) -> float:
    """The longest chord of the convex polygon ``hull`` at right angles to the unit vector ``axis``:
    the polygon's edges are cut by ``samples`` lines across the axis, all at once."""
    normal = np.array([-axis[1], axis[0]])
    a0, c0 = hull @ axis, hull @ normal
    if len(hull) < 3:
        return float(c0.max() - c0.min())
    a1, c1 = np.roll(a0, -1), np.roll(c0, -1)
    t = np.linspace(a0.min(), a0.max(), samples)[:, None]
    crosses = ((a0 - t) * (a1 - t) <= 0) & (a0 != a1)
    with np.errstate(divide="ignore", invalid="ignore"):
        hit = c0 + (t - a0) / (a1 - a0) * (c1 - c0)
    top = np.where(crosses, hit, -np.inf).max(axis=1)
    bottom = np.where(crosses, hit, np.inf).min(axis=1)
    chords = np.where(crosses.sum(axis=1) >= 2, top - bottom, 0.0)
    return float(chords.max())


def diameters(mask: np.ndarray, geometry: Geometry, concept: str = "",
              ids: list[int] | None = None) -> tuple[Measurement, Measurement]:
    """The longest diameter across the mask's convex hull, and the longest one perpendicular to it."""
    plane, index = _plane(mask)
    if not plane.any():
        raise ValueError(f"the {concept or 'mask'} is empty: nothing to measure")
    spacing = _spacing(geometry)
    hull = _hull_points(plane, spacing)
    gaps = hull[:, None, :] - hull[None, :, :]
    dist = np.sqrt((gaps ** 2).sum(axis=-1))
    i, j = np.unravel_index(int(dist.argmax()), dist.shape)
    axis = gaps[i, j] / dist[i, j] if dist[i, j] > 0 else np.array([1.0, 0.0])  # a single pixel: any axis
    normal = np.array([-axis[1], axis[0]])
    longest = float(dist[i, j]) + _pitch(axis, spacing)
    across = _longest_chord_across(hull, axis) + _pitch(normal, spacing)
    known = geometry.pixel_spacing is not None
    unit = "mm" if known else "px"
    common = {"concept": concept, "ids": ids or [], "unit": unit, "spacing_known": known, "slice_index": index}
    return (
        Measurement(kind="longest diameter", value=longest,
                    pixels=_in_pixels(longest, axis, spacing) if known else None, **common),
        Measurement(kind="perpendicular diameter", value=across,
                    pixels=_in_pixels(across, normal, spacing) if known else None, **common),
    )


def _in_pixels(length_mm: float, direction: np.ndarray, spacing: tuple[float, float]) -> float:
    """A length along ``direction`` (a unit vector in mm space) in pixels of that direction."""
    return length_mm / _pitch(direction, spacing)


def volume(mask: np.ndarray, geometry: Geometry, concept: str = "", ids: list[int] | None = None) -> Measurement:
    """A volume mask's (S, H, W) volume: mL with pixel and slice spacing, else voxels."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"a volume needs an (S, H, W) mask, got shape {mask.shape}")
    voxels = int(mask.sum())
    per_voxel = geometry.voxel_volume_ml
    if per_voxel is None:
        return Measurement(kind="volume", concept=concept, ids=ids or [], value=float(voxels), unit="voxels",
                           spacing_known=False, pixels=voxels)
    return Measurement(kind="volume", concept=concept, ids=ids or [], value=voxels * per_voxel, unit="mL",
                       pixels=voxels)


def count(concept: str, ids: list[int]) -> Measurement:
    return Measurement(kind="count", concept=concept, ids=list(ids), value=float(len(ids)), unit="instances")


def _rows_spanned(mask: np.ndarray) -> int:
    rows = np.flatnonzero(np.asarray(mask, dtype=bool).any(axis=1))
    return int(rows[-1] - rows[0] + 1) if rows.size else 0


def _widest_row(mask: np.ndarray) -> int:
    """The widest extent, in pixels, from the leftmost to the rightmost mask pixel of any one row."""
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if not rows.size:
        return 0
    sub = mask[rows]
    width = sub.shape[1]
    left = sub.argmax(axis=1)
    right = width - 1 - sub[:, ::-1].argmax(axis=1)
    return int((right - left + 1).max())


def cup_to_disc(cup: np.ndarray, disc: np.ndarray, ids: list[int] | None = None) -> Measurement:
    """The vertical cup-to-disc ratio: the optic cup's vertical extent over the optic disc's."""
    cup_rows, disc_rows = _rows_spanned(_plane(cup)[0]), _rows_spanned(_plane(disc)[0])
    if not disc_rows or not cup_rows:
        raise ValueError("the cup-to-disc ratio needs a non-empty optic cup and optic disc")
    return Measurement(kind="cup-to-disc ratio", concept="optic cup / optic disc", ids=ids or [],
                       value=cup_rows / disc_rows, unit="ratio", threshold=CDR_THRESHOLD)


def cardiothoracic(heart: np.ndarray, lungs: np.ndarray, ids: list[int] | None = None) -> Measurement:
    """The cardiothoracic ratio of a PA chest X-ray: the cardiomediastinum's widest horizontal extent over
    the widest internal extent of the thorax (across the union of the lung masks, row by row)."""
    heart_width, thorax_width = _widest_row(_plane(heart)[0]), _widest_row(_plane(lungs)[0])
    if not heart_width or not thorax_width:
        raise ValueError("the cardiothoracic ratio needs a non-empty cardiomediastinum and lung mask")
    return Measurement(kind="cardiothoracic ratio", concept="cardiomediastinum / thorax", ids=ids or [],
                       value=heart_width / thorax_width, unit="ratio", threshold=CTR_THRESHOLD)


def ratios(groups: dict[str, dict[int, np.ndarray]], what: MeasureWhat | None = None) -> list[Measurement]:
    """The CDR and CTR that the measured concepts allow (``groups``: concept -> {id: mask})."""
    def union(names: tuple[str, ...]) -> tuple[np.ndarray | None, list[int]]:
        masks = {i: m for name in names for i, m in groups.get(name, {}).items()}
        if not masks:
            return None, []
        return np.logical_or.reduce(list(masks.values())), list(masks)

    out = []
    cup, cup_ids = union(CUP_CONCEPTS)
    disc, disc_ids = union(DISC_CONCEPTS)
    if what in (None, "cdr") and cup is not None and disc is not None:
        out.append(cup_to_disc(cup, disc, cup_ids + disc_ids))
    heart, heart_ids = union(HEART_CONCEPTS)
    lungs, lung_ids = union(LUNG_CONCEPTS)
    if what in (None, "ctr") and heart is not None and lungs is not None:
        out.append(cardiothoracic(heart, lungs, heart_ids + lung_ids))
    return out


def measure(groups: dict[str, dict[int, np.ndarray]], geometry: Geometry,
            what: MeasureWhat | None = None) -> list[Measurement]:
    """Every measurement ``what`` asks for (all that apply when None) over ``groups`` (concept -> {id: mask}):
    per concept its instance count, and per instance its area and diameters (a volume's too, on its
    largest slice) and, for volumes, its volume; then the ratios the concepts allow."""
    out: list[Measurement] = []
    for concept, masks in groups.items():
        if what in (None, "count"):
            out.append(count(concept, list(masks)))
        for mask_id, mask in masks.items():
            if not np.asarray(mask).any():
                continue
            if what in (None, "area"):
                out.append(area(mask, geometry, concept, [mask_id]))
            if what in (None, "diameter"):
                out.extend(diameters(mask, geometry, concept, [mask_id]))
            if what in (None, "volume") and np.ndim(mask) == 3:
                out.append(volume(mask, geometry, concept, [mask_id]))
    out.extend(ratios(groups, what))
    return out


def spacing_note(measurements: list[Measurement]) -> str:
    """The sentence an answer adds when sizes are in pixels because the spacing was unknown."""
    if any(not m.spacing_known for m in measurements):
        return "The pixel spacing was unknown, so sizes are in pixels and % of the image, not millimetres."
    return ""


def describe(measurements: list[Measurement]) -> str:
    """All measurements in one paragraph, units stated, ratios with their usual threshold."""
    parts = [m.text for m in measurements]
    if not parts:
        return ""
    note = spacing_note(measurements)
    return "; ".join(parts) + "." + (f" {note}" if note else "")
