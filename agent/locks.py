"""One lock per key (a thread id): turns of one conversation run one at a time, other conversations don't wait."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class KeyedLocks:
    """Locks created on first use and dropped when nobody holds or waits for them (no growth per thread id)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}  # key -> (lock, holders + waiters)

    def _enter(self, key: str) -> threading.Lock:
        with self._guard:
            lock, users = self._locks.get(key, (None, 0))
            lock = lock or threading.Lock()
            self._locks[key] = (lock, users + 1)
            return lock

    def _leave(self, key: str) -> None:
        with self._guard:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    @contextmanager
    def hold(self, key: str, timeout: float | None = None) -> Iterator[bool]:
        """Hold ``key``'s lock for the block; yields False if ``timeout`` passed first (the block still runs)."""
        lock = self._enter(key)
        acquired = lock.acquire(timeout=-1 if timeout is None else timeout)
        try:
            yield acquired
        finally:
            if acquired:
                lock.release()
            self._leave(key)

    def busy(self, key: str) -> bool:
        """Whether a turn holds (or waits for) ``key`` now."""
        with self._guard:
            return key in self._locks
