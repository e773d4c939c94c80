"""The one interface every segmentation backend implements, and the `Segmenter` facade.

A backend is told the image once (``set_image``), computes its embedding once, and then
answers any number of prompts on it (``segment``). Backends keep an LRU of recent image
embeddings keyed by content hash, bounded by bytes, so passing the same image again is free.
"""

from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np

from segmenter.image_io import ImageInput, load_image
from segmenter.types import Box, Point, Prompt, SegmentationResult

E = TypeVar("E")


def image_key(image: np.ndarray) -> str:
    digest = hashlib.sha1(image.tobytes())
    digest.update(str(image.shape).encode())
    return digest.hexdigest()[:16]


def nbytes(value: Any, _seen: set[int] | None = None) -> int:
    """Bytes held by the arrays and tensors inside ``value`` (dataclasses, mappings, sequences, objects).

    Tensors count where they live (GPU memory for CUDA tensors); an array reached twice counts once.
    """
    seen = set() if _seen is None else _seen
    if value is None or isinstance(value, (str, int, float, bool)) or id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if hasattr(value, "element_size") and hasattr(value, "nelement"):  # a torch tensor, without importing torch
        return int(value.element_size() * value.nelement())
    if isinstance(value, Mapping):
        return sum(nbytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return sum(nbytes(v, seen) for v in value)
    if is_dataclass(value):
        return sum(nbytes(getattr(value, f.name), seen) for f in fields(value))
    if hasattr(value, "__dict__"):
        return sum(nbytes(v, seen) for v in vars(value).values())
    return 0


class EmbeddingCache(Generic[E]):
    """An LRU bounded by bytes (``nbytes`` of each value): key -> what a backend computed for an image.

    Values may grow after ``put`` (embeddings computed lazily): call ``fit()`` then. The most recent
    entry is never dropped, whatever its size: it is the one in use. Thread-safe.
    """

    def __init__(self, max_bytes: int, max_items: int | None = None) -> None:
        if max_bytes <= 0:
            raise ValueError(f"cache budget must be positive, got {max_bytes} bytes")
        self.max_bytes = max_bytes
        self.max_items = max_items
        self._items: OrderedDict[str, E] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return sum(nbytes(v) for v in self._items.values())

    def get(self, key: str) -> E | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key: str, value: E) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            self._evict()

    def fit(self) -> None:
        """Drop least recently used entries until the budget holds again (after values grew)."""
        with self._lock:
            self._evict()

    def _evict(self) -> None:
        sizes = {k: nbytes(v) for k, v in self._items.items()}  # a handful of entries: cheap
        total = sum(sizes.values())
        while len(self._items) > 1 and (total > self.max_bytes or (self.max_items and len(self._items) > self.max_items)):
            key, _ = self._items.popitem(last=False)
            total -= sizes[key]


class SegmenterBackend(ABC):
    """Set an image once, then answer prompts on it."""

    name: str = "backend"

    @abstractmethod
    def set_image(self, image: np.ndarray) -> str:
        """Take an RGB uint8 array, compute (or reuse) its embedding; return the image key."""

    @abstractmethod
    def segment(self, prompt: Prompt) -> SegmentationResult:
        """Answer one prompt on the current image."""

    @abstractmethod
    def concepts(self) -> list[str]:
        """Concept names the backend was trained on (others may still work, less well)."""

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "concepts": self.concepts()}

    @property
    def encode_count(self) -> int:
        """How many times the image encoder ran (tests check embedding reuse with it)."""
        return getattr(self, "_encode_count", 0)


@runtime_checkable
class PresenceGated(Protocol):
    """A backend that drops a concept's masks below a presence threshold, settable per call."""

    presence_threshold: float

    def segment(self, prompt: Prompt, *, presence_threshold: float | None = None) -> SegmentationResult: ...


def build_backend(name: str = "lite", **options: Any) -> SegmenterBackend:
    """Backends by name: ``lite`` (offline default), ``sam3`` and ``remote`` when installed."""
    if name == "lite":
        from segmenter.lite.backend import LiteBackend

        return LiteBackend(**options)
    if name == "sam3":
        from segmenter.sam3_backend import Sam3Backend  # type: ignore[import-not-found]

        return Sam3Backend(**options)
    if name == "remote":
        from segmenter.remote import RemoteBackend  # type: ignore[import-not-found]

        return RemoteBackend(**options)
    raise ValueError(f"unknown segmenter backend {name!r}; choose lite, sam3 or remote")


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
