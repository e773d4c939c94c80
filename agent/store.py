"""Where candidate masks (and images given as arrays) live, outside the checkpointed state.

``MemoryMaskStore`` for one process; ``SqliteMaskStore`` keeps them in the checkpoint's SQLite
file (its own tables), so a thread can be resumed by a new process. Masks are stored as COCO
RLE (pycocotools), a few hundred bytes to a few KB each.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from PIL import Image

from tools import rle


class MaskStore(ABC):
    @abstractmethod
    def put_masks(self, thread_id: str, masks: dict[int, np.ndarray]) -> None: ...

    @abstractmethod
    def _get_rle(self, thread_id: str, mask_id: int) -> dict | None: ...

    @abstractmethod
    def put_image(self, key: str, image: np.ndarray) -> None: ...

    @abstractmethod
    def get_image(self, key: str) -> np.ndarray | None: ...

    @abstractmethod
    def delete_thread(self, thread_id: str) -> None: ...

    def get_mask(self, thread_id: str, mask_id: int) -> np.ndarray:
        found = self._get_rle(thread_id, mask_id)
        if found is None:
            raise KeyError(f"mask #{mask_id} of thread {thread_id!r} is not in the mask store")
        return rle.decode(found)


class MemoryMaskStore(MaskStore):
    def __init__(self) -> None:
        self._masks: dict[tuple[str, int], dict] = {}
        self._images: dict[str, np.ndarray] = {}

    def put_masks(self, thread_id: str, masks: dict[int, np.ndarray]) -> None:
        for mask_id, mask in masks.items():
            self._masks[(thread_id, int(mask_id))] = rle.encode(mask)

    def _get_rle(self, thread_id: str, mask_id: int) -> dict | None:
        return self._masks.get((thread_id, int(mask_id)))

    def put_image(self, key: str, image: np.ndarray) -> None:
        self._images[key] = image

    def get_image(self, key: str) -> np.ndarray | None:
        return self._images.get(key)

    def delete_thread(self, thread_id: str) -> None:
        for k in [k for k in self._masks if k[0] == thread_id]:
            del self._masks[k]


class SqliteMaskStore(MaskStore):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, self._conn:
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS agent_masks (thread_id TEXT, mask_id INTEGER, rle TEXT, "
                "PRIMARY KEY (thread_id, mask_id))"
            )
            self._conn.execute("CREATE TABLE IF NOT EXISTS agent_images (key TEXT PRIMARY KEY, png BLOB)")

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

    def put_image(self, key: str, image: np.ndarray) -> None:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")  # lossless: the same pixels come back
        with self._lock, self._conn:
            self._conn.execute("INSERT OR REPLACE INTO agent_images VALUES (?, ?)", (key, buffer.getvalue()))

    def get_image(self, key: str) -> np.ndarray | None:
        with self._lock:
            row = self._conn.execute("SELECT png FROM agent_images WHERE key = ?", (key,)).fetchone()
        return None if row is None else np.asarray(Image.open(io.BytesIO(row[0])).convert("RGB"))

    def delete_thread(self, thread_id: str) -> None:
        with self._lock, self._conn:
            self._conn.execute("DELETE FROM agent_masks WHERE thread_id = ?", (thread_id,))

    def close(self) -> None:
        self._conn.close()
