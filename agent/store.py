"""Where candidate masks and the threads' images live, outside the checkpointed state.

``MemoryMaskStore`` for one process (bounded: least recently used entries go first);
``SqliteMaskStore`` keeps them in the checkpoint's SQLite file (its own tables), so a thread can
be resumed by a new process. Masks are stored as COCO RLE (pycocotools), a few hundred bytes to
a few KB each. Images are keyed by content hash and shared by the threads that use them: deleting
a thread deletes its masks, and its image once no other thread uses it.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from segmenter import rle

DEFAULT_MEMORY_BYTES = 256 * 1024 * 1024  # MemoryMaskStore's budget: images and masks together


class MaskStore(ABC):
    @abstractmethod
    def put_masks(self, thread_id: str, masks: dict[int, np.ndarray]) -> None: ...

    @abstractmethod
    def _get_rle(self, thread_id: str, mask_id: int) -> dict | None: ...

    @abstractmethod
    def put_image(self, key: str, image: np.ndarray, *, thread_id: str) -> None:
        """Keep ``image`` under ``key`` (its content hash) for as long as ``thread_id`` (or another thread) uses it."""

    @abstractmethod
    def get_image(self, key: str) -> np.ndarray | None: ...

    @abstractmethod
    def delete_thread(self, thread_id: str) -> None:
        """Delete the thread's masks, and every image no remaining thread uses."""

    def get_mask(self, thread_id: str, mask_id: int) -> np.ndarray:
        found = self._get_rle(thread_id, mask_id)
        if found is None:
            raise KeyError(f"mask #{mask_id} of thread {thread_id!r} is not in the mask store")
        return rle.decode(found)


def _rle_bytes(encoded: dict) -> int:
    return len(encoded["counts"]) + 64  # the counts string and the dict around it, roughly


class MemoryMaskStore(MaskStore):
    """An LRU bounded by bytes: when images and masks together pass ``max_bytes``, the least recently
    used go first (never the entry just stored). A thread whose entries were evicted cannot be
    continued: its next turn says its image or a mask is no longer stored."""

    def __init__(self, max_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple, tuple[object, int]] = OrderedDict()  # ("mask", thread, id) | ("image", key)
        self._users: dict[str, set[str]] = {}  # image key -> threads that use it
        self._bytes = 0
        self._lock = threading.Lock()  # runs of different threads share the store

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def _put(self, item: tuple, value: object, size: int) -> None:
        old = self._items.pop(item, None)
        if old is not None:
            self._bytes -= old[1]
        self._items[item] = (value, size)
        self._bytes += size
        while self._bytes > self.max_bytes and len(self._items) > 1:
            evicted, (_, evicted_size) = self._items.popitem(last=False)
            self._bytes -= evicted_size
            if evicted[0] == "image":
                self._users.pop(evicted[1], None)

    def _get(self, item: tuple) -> object | None:
        found = self._items.get(item)
        if found is None:
            return None
        self._items.move_to_end(item)
        return found[0]

    def put_masks(self, thread_id: str, masks: dict[int, np.ndarray]) -> None:
        with self._lock:
            for mask_id, mask in masks.items():
                encoded = rle.encode(mask)
                self._put(("mask", thread_id, int(mask_id)), encoded, _rle_bytes(encoded))

    def _get_rle(self, thread_id: str, mask_id: int) -> dict | None:
        with self._lock:
            return self._get(("mask", thread_id, int(mask_id)))  # type: ignore[return-value]

    def put_image(self, key: str, image: np.ndarray, *, thread_id: str) -> None:
        with self._lock:
            if self._get(("image", key)) is None:
                self._put(("image", key), image, int(image.nbytes))
            if ("image", key) in self._items:
                self._users.setdefault(key, set()).add(thread_id)

    def get_image(self, key: str) -> np.ndarray | None:
        with self._lock:
            return self._get(("image", key))  # type: ignore[return-value]

    def delete_thread(self, thread_id: str) -> None:
        with self._lock:
            for item in [k for k in self._items if k[0] == "mask" and k[1] == thread_id]:
                self._bytes -= self._items.pop(item)[1]
            for key in [k for k, users in self._users.items() if thread_id in users]:
                self._users[key].discard(thread_id)
                if not self._users[key]:
                    del self._users[key]
                    self._bytes -= self._items.pop(("image", key))[1]


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")  # lossless: the same pixels come back
    return buffer.getvalue()


class SqliteMaskStore(MaskStore):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, self._conn:
            self._conn.execute("PRAGMA secure_delete = ON")  # deleted images and masks are zeroed on disk
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS agent_masks (thread_id TEXT, mask_id INTEGER, rle TEXT, "
                "PRIMARY KEY (thread_id, mask_id))"
            )
            self._conn.execute("CREATE TABLE IF NOT EXISTS agent_images (key TEXT PRIMARY KEY, png BLOB)")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS agent_image_users (thread_id TEXT, key TEXT, PRIMARY KEY (thread_id, key))"
            )

    def put_masks(self, thread_id: str, masks: dict[int, np.ndarray]) -> None:
        rows = [(thread_id, int(i), json.dumps(rle.encode(m))) for i, m in masks.items()]
        with self._lock, self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO agent_masks VALUES (?, ?, ?)", rows)

    def _get_rle(self, thread_id: str, mask_id: int) -> dict | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT rle FROM agent_masks WHERE thread_id = ? AND mask_id = ?", (thread_id, int(mask_id))
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def _has_image(self, key: str) -> bool:
        return self._conn.execute("SELECT 1 FROM agent_images WHERE key = ?", (key,)).fetchone() is not None

    def put_image(self, key: str, image: np.ndarray, *, thread_id: str) -> None:
        with self._lock:
            png = None if self._has_image(key) else _png(image)  # encoded once per image, not once per turn
        with self._lock, self._conn:  # the link and the image in one transaction: a delete cannot slip between
            self._conn.execute("INSERT OR IGNORE INTO agent_image_users VALUES (?, ?)", (thread_id, key))
            if not self._has_image(key):
                self._conn.execute("INSERT INTO agent_images VALUES (?, ?)", (key, png or _png(image)))

    def get_image(self, key: str) -> np.ndarray | None:
        with self._lock:
            row = self._conn.execute("SELECT png FROM agent_images WHERE key = ?", (key,)).fetchone()
        return None if row is None else np.asarray(Image.open(io.BytesIO(row[0])).convert("RGB"))

    def delete_thread(self, thread_id: str) -> None:
        with self._lock, self._conn:
            self._conn.execute("DELETE FROM agent_masks WHERE thread_id = ?", (thread_id,))
            self._conn.execute("DELETE FROM agent_image_users WHERE thread_id = ?", (thread_id,))
            self._conn.execute("DELETE FROM agent_images WHERE key NOT IN (SELECT key FROM agent_image_users)")

    def close(self) -> None:
        self._conn.close()
