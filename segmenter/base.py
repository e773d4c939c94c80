"""The one interface every segmentation backend implements (the ``Segmenter`` facade is in ``facade.py``).

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

from segmenter.types import Prompt, SegmentationResult

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
        while len(self._items) > 1 and (
            total > self.max_bytes or (self.max_items and len(self._items) > self.max_items)
        ):
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

    presence_threshold: float | None  # None: the backend's per-concept default

    def segment(self, prompt: Prompt, *, presence_threshold: float | None = None) -> SegmentationResult: ...
