"""The public entry point: ``Segmenter().segment(image, "polyp")``, over any backend of the table."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from segmenter.backends import build_backend
from segmenter.base import PresenceGated, SegmenterBackend
from segmenter.image_io import ImageInput
from segmenter.study_io import load_image
from segmenter.types import Box, Point, Prompt, SegmentationResult


class Segmenter:
    """The public entry point: ``Segmenter().segment(image, "polyp")``.

    >>> seg = Segmenter()                      # MedSAM3-Lite, offline, CPU
    >>> seg.set_image("colon.jpg")
    >>> result = seg.segment(concept="polyp")  # reuses the embedding for every later prompt

    One Segmenter may serve several runs at once (UI users, threads): ``handle(image)`` gives each
    run its own current image, and a lock makes "set this run's image, then segment" one step.
    """

    def __init__(self, backend: str | SegmenterBackend = "lite", **options: Any) -> None:
        self.backend = backend if isinstance(backend, SegmenterBackend) else build_backend(backend, **options)
        self._image: np.ndarray | None = None
        self._lock = threading.RLock()  # the backend holds one current image: set_image + segment must not interleave

    @property
    def image(self) -> np.ndarray:
        if self._image is None:
            raise RuntimeError("no image set: call set_image(image) first")
        return self._image

    def set_image(self, image: ImageInput) -> str:
        array = load_image(image)
        with self._lock:
            key = self.backend.set_image(array)
            self._image = array
        return key

    def segment(
        self,
        image: ImageInput | None = None,
        concept: str | None = None,
        *,
        boxes: list[Box] | list[list[float]] | None = None,
        points: list[Point] | list[tuple[float, float]] | None = None,
        prompt: Prompt | None = None,
        presence_threshold: float | None = None,
    ) -> SegmentationResult:
        """Segment a concept phrase, boxes and/or points; ``image`` sets a new image first.

        ``presence_threshold`` overrides the backend's own for this call (backends that have one).
        """
        if prompt is None:
            prompt = Prompt(
                concept=concept,
                boxes=[b if isinstance(b, Box) else Box.from_list(b) for b in boxes or []],
                points=[p if isinstance(p, Point) else Point(x=p[0], y=p[1]) for p in points or []],
            )
        with self._lock:
            if image is not None:
                self.set_image(image)
            h, w = self.image.shape[:2]
            prompt = prompt.model_copy(update={"boxes": [b.clipped(w, h) for b in prompt.boxes]})
            for p in prompt.points:
                if not (0 <= p.x < w and 0 <= p.y < h):
                    raise ValueError(f"point ({p.x}, {p.y}) lies outside the {w}x{h} image")
            if presence_threshold is not None and isinstance(self.backend, PresenceGated):
                # an argument of this call: the shared backend's own threshold is never changed
                return self.backend.segment(prompt, presence_threshold=float(presence_threshold))
            return self.backend.segment(prompt)

    def handle(self, image: ImageInput | None = None, *, presence_threshold: float | None = None) -> SegmenterHandle:
        """A handle for one run (or one user's settings) that shares this Segmenter's backend and lock."""
        return SegmenterHandle(self, image, presence_threshold=presence_threshold)

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
                 presence_threshold: float | None = None) -> None:
        self.shared = shared
        self.backend = shared.backend
        self.presence_threshold = presence_threshold
        self._lock = shared._lock
        self._image = None
        if image is not None:
            self.set_image(image)

    def set_image(self, image: ImageInput) -> str:
        with self._lock:
            key = self.shared.set_image(image)
            self._image = self.shared._image
        return key

    def segment(self, image: ImageInput | None = None, concept: str | None = None, **kwargs: Any) -> SegmentationResult:
        if image is not None:
            self.set_image(image)
        kwargs.setdefault("presence_threshold", self.presence_threshold)
        return self.shared.segment(self.image, concept, **kwargs)

    def handle(self, image: ImageInput | None = None, *, presence_threshold: float | None = None) -> SegmenterHandle:
        threshold = self.presence_threshold if presence_threshold is None else presence_threshold
        return SegmenterHandle(self.shared, image, presence_threshold=threshold)
