"""The public entry point: ``Segmenter().segment(image, "polyp")``, over any backend of the table."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from segmenter import laterality
from segmenter.backends import build_backend
from segmenter.base import PresenceGated, SegmenterBackend
from segmenter.catalog import load_catalog
from segmenter.image_io import ImageInput
from segmenter.study import Geometry
from segmenter.study_io import load_image
from segmenter.types import Box, Point, Prompt, SegmentationResult


class Segmenter:
    """The public entry point: ``Segmenter().segment(image, "polyp")``.

    >>> seg = Segmenter()                      # MedSAM3-Lite, offline, CPU
    >>> seg.set_image("colon.jpg")
    >>> result = seg.segment(concept="polyp")  # reuses the embedding for every later prompt

    One Segmenter may serve several runs at once (UI users, threads): ``handle(image)`` gives each
    run its own current image, and a lock makes "set this run's image, then segment" one step.

    A lateral concept ("left lung", "right kidney": see ``ConceptCatalog.lateral``) is segmented as its
    paired base concept (whose presence gate applies) and that side is kept by the image's orientation:
    ``geometry`` (a DICOM/NIfTI affine) where given, else the radiological convention; the result's
    ``laterality`` says which (``segmenter.laterality``). Box and point prompts go to the backend as given.

    The geometry's modality (a DICOM's Modality tag, or the one given with a NIfTI) goes with every prompt
    (``Prompt.modality``), so a backend can pick the weights that know that modality (MedSAM3-Lite's CT expert).
    """

    def __init__(self, backend: str | SegmenterBackend = "lite", **options: Any) -> None:
        self.backend = backend if isinstance(backend, SegmenterBackend) else build_backend(backend, **options)
        self._image: np.ndarray | None = None
        self._geometry: Geometry | None = None  # the current image's orientation, where known
        self._lock = threading.RLock()  # the backend holds one current image: set_image + segment must not interleave

    @property
    def image(self) -> np.ndarray:
        if self._image is None:
            raise RuntimeError("no image set: call set_image(image) first")
        return self._image

    def set_image(self, image: ImageInput, geometry: Geometry | None = None) -> str:
        """``geometry``: the image's (a DICOM/NIfTI slice's); it orients "left X"/"right X" prompts."""
        array = load_image(image)
        with self._lock:
            key = self.backend.set_image(array)
            self._image = array
            self._geometry = geometry
        return key

    def prefetch(self, image: ImageInput) -> None:
        """Let the backend start encoding ``image`` in the background where it can (MedSAM3-Lite does): a later
        ``set_image`` of the same pixels takes it. Loops call it with their next slice or image."""
        start = getattr(self.backend, "prefetch", None)
        if start is not None:
            start(load_image(image))

    def segment(
        self,
        image: ImageInput | None = None,
        concept: str | None = None,
        *,
        boxes: list[Box] | list[list[float]] | None = None,
        points: list[Point] | list[tuple[float, float]] | None = None,
        prompt: Prompt | None = None,
        presence_threshold: float | None = None,
        geometry: Geometry | None = None,
    ) -> SegmentationResult:
        """Segment a concept phrase, boxes and/or points; ``image`` sets a new image first.

        ``presence_threshold`` overrides the backend's own for this call (backends that have one).
        ``geometry``: the image's, for this call (else the one given with the current image).
        """
        if prompt is None:
            prompt = Prompt(
                concept=concept,
                boxes=[b if isinstance(b, Box) else Box.from_list(b) for b in boxes or []],
                points=[p if isinstance(p, Point) else Point(x=p[0], y=p[1]) for p in points or []],
            )
        with self._lock:
            if image is not None:
                self.set_image(image, geometry)
            geometry = geometry if geometry is not None else self._geometry
            h, w = self.image.shape[:2]
            modality = prompt.modality or (geometry.modality if geometry is not None else None)
            prompt = Prompt.model_validate({**prompt.model_dump(), "modality": modality,
                                            "boxes": [b.clipped(w, h) for b in prompt.boxes]})
            for p in prompt.points:
                if not (0 <= p.x < w and 0 <= p.y < h):
                    raise ValueError(f"point ({p.x}, {p.y}) lies outside the {w}x{h} image")
            catalog = load_catalog()
            entry = catalog.get(prompt.concept) if prompt.concept else None
            lateral = catalog.lateral(prompt.concept) if prompt.concept and not prompt.boxes and not prompt.points \
                else None
            if lateral is None:
                return self._backend_segment(prompt, presence_threshold)
            side, base = lateral
            orient = laterality.orientation(geometry)  # before the decode: a sagittal slice is refused at once
            found = self._backend_segment(Prompt(concept=base.name, modality=modality), presence_threshold)  # its gate
            timings, extra, refine = dict(found.timings_ms), [], found.refine
            if found.instances and entry is not None and entry.side == side:  # an entry of its own: its mask helps
                own = self._backend_segment(Prompt(concept=entry.name, modality=modality), presence_threshold)
                extra = own.instances
                timings.update({k: timings.get(k, 0.0) + v for k, v in own.timings_ms.items()})
                refine = refine if own.refine == refine else "none"  # masks drawn two ways: not all redrawn
            instances = laterality.lateral_instances(found.instances, side, orient, found.image_size, extra)
            return found.model_copy(update={"prompt": prompt, "instances": instances, "timings_ms": timings,
                                            "laterality": orient.describe(), "refine": refine})

    def _backend_segment(self, prompt: Prompt, presence_threshold: float | None) -> SegmentationResult:
        if presence_threshold is not None and isinstance(self.backend, PresenceGated):
            # an argument of this call: the shared backend's own threshold is never changed
            return self.backend.segment(prompt, presence_threshold=float(presence_threshold))
        return self.backend.segment(prompt)

    def handle(self, image: ImageInput | None = None, *, presence_threshold: float | None = None,
               geometry: Geometry | None = None) -> SegmenterHandle:
        """A handle for one run (or one user's settings) that shares this Segmenter's backend and lock."""
        return SegmenterHandle(self, image, presence_threshold=presence_threshold, geometry=geometry)

    def concepts(self) -> list[str]:
        return self.backend.concepts()

    def info(self) -> dict[str, Any]:
        return self.backend.info()


class SegmenterHandle(Segmenter):
    """One run's view of a shared Segmenter: its prompts always go to its own image.

    Every ``segment`` sets this run's image again under the shared lock, in case another run
    set a different one in between: a hash and (usually) an embedding-cache hit, not a new encode.
    Calls go through the shared Segmenter's ``segment``, so a subclass that meters it sees them.
    """

    def __init__(self, shared: Segmenter, image: ImageInput | None = None, *,
                 presence_threshold: float | None = None, geometry: Geometry | None = None) -> None:
        self.shared = shared
        self.backend = shared.backend
        self.presence_threshold = presence_threshold
        self._lock = shared._lock
        self._image = None
        self._geometry = geometry
        if image is not None:
            self.set_image(image, geometry)

    def set_image(self, image: ImageInput, geometry: Geometry | None = None) -> str:
        with self._lock:
            key = self.shared.set_image(image, geometry)
            self._image = self.shared._image
            self._geometry = geometry
        return key

    def segment(self, image: ImageInput | None = None, concept: str | None = None, **kwargs: Any) -> SegmentationResult:
        if image is not None:
            self.set_image(image)
        kwargs.setdefault("presence_threshold", self.presence_threshold)
        if kwargs.get("geometry") is None:
            kwargs["geometry"] = self._geometry
        return self.shared.segment(self.image, concept, **kwargs)

    def handle(self, image: ImageInput | None = None, *, presence_threshold: float | None = None,
               geometry: Geometry | None = None) -> SegmenterHandle:
        threshold = self.presence_threshold if presence_threshold is None else presence_threshold
        return SegmenterHandle(self.shared, image, presence_threshold=threshold,
                               geometry=geometry if geometry is not None else self._geometry)
