"""Segment concepts over a study's slices, then clean up in 3D.

Each slice is encoded once and every concept is prompted on it before the next slice (the
backend's embedding serves all prompts of that slice); the next slice is encoded in the background
meanwhile, where the backend can (``Segmenter.prefetch``). A blank slice (one value throughout: air or
padding beyond the body once windowed, the empty slices that end a skull-stripped MR) shows nothing, so
it is not encoded and its masks stay empty (presence 0). Per slice, the backend's presence gate
decides whether the concept is there (its presence score against its threshold) and only then
returns a mask. The stacked masks are cleaned in 3D: voxels are grouped into 26-connected
components, components under a volume threshold are dropped as islands, an organ the body has a set
number of (the catalog's ``max_parts_3d``: one liver, two kidneys) keeps that many of the largest, and
each kept component is one instance (a lesion, an organ).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from segmenter.catalog import load_catalog
from segmenter.facade import Segmenter
from segmenter.study import Geometry, Study

Progress = Callable[[int, int], None]  # (slices done, slices to do)
MIN_VOLUME_ML = 0.02  # islands below this (20 mm³) are dropped when the voxel size is known
MIN_VOXELS = 20  # ... and below this many voxels when it is not


class VolumeError(ValueError):
    """A volume request that cannot be met (bad slice range, no concept); the message says why."""


def parse_slices(spec: str | range | slice | None, n_slices: int) -> range:
    """The slice indices to segment: None (all), a range/slice, or text "40:80" (start inclusive, end
    exclusive, either may be left out) or "40" (one slice). Raises ``VolumeError`` when nothing is left."""
    if spec is None:
        return range(n_slices)
    if isinstance(spec, range):
        spec = slice(spec.start, spec.stop, spec.step)
    if isinstance(spec, str):
        spec = _slice_from_text(spec)
    if spec.step not in (None, 1):
        raise VolumeError("a slice range takes no step")
    for bound in (spec.start, spec.stop):
        if bound is not None and not 0 <= bound <= n_slices:
            raise VolumeError(f"slice range {_show(spec)} lies outside the study's {n_slices} slices (0..{n_slices})")
    chosen = range(*spec.indices(n_slices))
    if len(chosen) == 0:
        raise VolumeError(f"slice range {_show(spec)} holds no slice of the study's {n_slices}")
    return chosen


def _slice_from_text(text: str) -> slice:
    parts = text.strip().split(":")
    if len(parts) > 2 or not all(p.strip().isdigit() or not p.strip() for p in parts):
        raise VolumeError(f"slice range {text[:40]!r}: expected START:END (e.g. 40:80) or one slice index")
    if len(parts) == 1:
        if not parts[0].strip():
            raise VolumeError("slice range is empty")
        index = int(parts[0])
        return slice(index, index + 1)
    start, stop = (int(p) if p.strip() else None for p in parts)
    return slice(start, stop)


def _show(spec: slice) -> str:
    return f"{'' if spec.start is None else spec.start}:{'' if spec.stop is None else spec.stop}"


@dataclass(frozen=True)
class Component:
    """One 3D connected component kept after clean-up: an instance of the concept."""

    label: int  # its value in ``ConceptVolume.labels``
    voxels: int
    bbox: tuple[int, int, int, int, int, int]  # slice0, row0, col0, slice1, row1, col1 (end exclusive)
    score: float  # the highest presence of the slices it spans


@dataclass
class ConceptVolume:
    """One concept over the study: its mask, its components and the presence score per slice."""

    concept: str
    labels: np.ndarray  # (S, H, W) int32: 0 background, k = component k (kept components only)
    components: list[Component]
    presence: list[float | None]  # per study slice; None where the slice was not segmented, 0 where it is blank
    dropped_islands: int = 0

    @property
    def mask(self) -> np.ndarray:
        return self.labels > 0

    def component_mask(self, label: int) -> np.ndarray:
        return self.labels == label

    @property
    def found(self) -> bool:
        return bool(self.components)

    def key_slice(self) -> int | None:
        """The slice where the mask is largest (None when nothing was found)."""
        if not self.components:
            return None
        return int(self.mask.reshape(self.labels.shape[0], -1).sum(axis=1).argmax())


@dataclass
class VolumeResult:
    shape: tuple[int, int, int]
    slices: range  # the slices segmented
    concepts: dict[str, ConceptVolume] = field(default_factory=dict)
    seconds: float = 0.0


def island_threshold(geometry: Geometry, min_volume_ml: float = MIN_VOLUME_ML, min_voxels: int = MIN_VOXELS) -> int:
    """The smallest component kept, in voxels: ``min_volume_ml`` where the voxel size is known."""
    per_voxel = geometry.voxel_volume_ml
    if per_voxel is None or per_voxel <= 0:
        return min_voxels
    return max(1, int(np.ceil(min_volume_ml / per_voxel)))


def clean_3d(mask: np.ndarray, min_voxels: int, presence: Sequence[float | None] | None = None,
             max_parts: int | None = None) -> tuple[np.ndarray, list[Component], int]:
    """Label ``mask`` (S, H, W) into 26-connected components; drop those under ``min_voxels``, and all but the
    ``max_parts`` largest (an organ the body has one of: the catalog's ``max_parts_3d``).

    Returns the relabelled components (1..n, largest first), their descriptions and the number dropped.
    """
    raw, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return np.zeros(mask.shape, np.int32), [], 0
    sizes = np.bincount(raw.ravel(), minlength=n + 1)
    boxes = ndimage.find_objects(raw)
    keep = sorted((k for k in range(1, n + 1) if sizes[k] >= min_voxels), key=lambda k: -sizes[k])[:max_parts]
    lookup = np.zeros(n + 1, np.int32)
    components = []
    for new, old in enumerate(keep, start=1):
        lookup[old] = new
        box = boxes[old - 1]
        spanned = [presence[s] for s in range(box[0].start, box[0].stop)] if presence is not None else []
        score = max((p for p in spanned if p is not None), default=1.0)
        components.append(Component(label=new, voxels=int(sizes[old]), score=float(score),
                                    bbox=(box[0].start, box[1].start, box[2].start,
                                          box[0].stop, box[1].stop, box[2].stop)))
    return lookup[raw], components, n - len(keep)


def is_blank(image: np.ndarray) -> bool:
    """One value throughout: no structure, so no object in it."""
    return bool(image.size == 0 or image.min() == image.max())


class VolumeSegmentation:
    """One run of ``segment_volume`` that can be stepped: iterate to segment slice by slice (each step
    yields (done, total)), then ``result()`` cleans up in 3D. Callers that stream progress use this."""

    def __init__(self, segmenter: Segmenter, study: Study, concepts: str | Sequence[str], *,
                 slices: str | range | slice | None = None, presence_threshold: float | None = None,
                 min_voxels: int | None = None) -> None:
        self.names = [concepts] if isinstance(concepts, str) else list(dict.fromkeys(concepts))
        if not self.names:
            raise VolumeError("no concept to segment")
        self.segmenter, self.study = segmenter, study
        self.chosen = parse_slices(slices, study.shape[0])
        self.gate: dict[str, Any] = {} if presence_threshold is None else {"presence_threshold": presence_threshold}
        self.min_voxels = island_threshold(study.geometry) if min_voxels is None else min_voxels
        self.raw = {c: np.zeros(study.shape, dtype=bool) for c in self.names}
        self.presence: dict[str, list[float | None]] = {c: [None] * study.shape[0] for c in self.names}
        self._start = time.perf_counter()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        slices = self.study.slices
        shown = [index for index in self.chosen if not is_blank(slices[index])]
        next_shown = dict(zip(shown, [*shown[1:], None], strict=True))  # each shown slice -> the next one
        for done, index in enumerate(self.chosen, start=1):
            if index not in next_shown:  # blank: nothing to encode or find
                for concept in self.names:
                    self.presence[concept][index] = 0.0
                yield done, len(self.chosen)
                continue
            # one encode, reused by every concept below; the geometry orients "left X" / "right X" prompts
            self.segmenter.set_image(slices[index], self.study.geometry)
            following = next_shown[index]
            if following is not None:  # the next slice encodes in the background while this one is decoded
                self.segmenter.prefetch(slices[following])
            for concept in self.names:
                result = self.segmenter.segment(concept=concept, **self.gate)  # a handle's own gate holds if unset
                self.presence[concept][index] = float(result.presence)
                if result.instances:  # the backend's presence gate passed
                    self.raw[concept][index] = result.union_mask
            yield done, len(self.chosen)

    def result(self) -> VolumeResult:
        out = VolumeResult(shape=self.study.shape, slices=self.chosen)
        catalog = load_catalog()
        for concept in self.names:
            entry = catalog.get(concept)
            labels, components, dropped = clean_3d(self.raw[concept], self.min_voxels, self.presence[concept],
                                                   entry.max_parts_3d if entry is not None else None)
            out.concepts[concept] = ConceptVolume(concept=concept, labels=labels, components=components,
                                                  presence=self.presence[concept], dropped_islands=dropped)
        out.seconds = time.perf_counter() - self._start
        return out


def segment_volume(segmenter: Segmenter, study: Study, concepts: str | Sequence[str], *,
                   slices: str | range | slice | None = None, presence_threshold: float | None = None,
                   min_voxels: int | None = None, progress: Progress | None = None) -> VolumeResult:
    """Segment ``concepts`` on each chosen slice of ``study`` (each slice encoded once), then clean up in 3D.

    ``slices``: which slices to run (see ``parse_slices``); the others stay empty in the masks.
    ``presence_threshold``: the gate for this call (else the backend's own). ``min_voxels``: the
    smallest component kept (else ``island_threshold`` of the study's geometry). ``progress`` is
    called with (done, total) after each slice.
    """
    run = VolumeSegmentation(segmenter, study, concepts, slices=slices, presence_threshold=presence_threshold,
                             min_voxels=min_voxels)
    for done, total in run:
        if progress is not None:
            progress(done, total)
    return run.result()
