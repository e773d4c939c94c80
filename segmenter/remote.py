"""``build_backend("remote")`` imports ``RemoteBackend`` from here; the code lives in ``segmenter.service``."""

from segmenter.service.client import RemoteBackend, RemoteError

__all__ = ["RemoteBackend", "RemoteError"]
