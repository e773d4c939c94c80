"""Backends by name: the one table from the name a user types (``--backend``, ``--segmenter``) to its class.

The table holds import paths, not classes, so choosing ``lite`` never imports SAM 3's model code
or the HTTP client: a backend's module is imported when it is chosen.
"""

from __future__ import annotations

import importlib
from typing import Any

from segmenter.base import SegmenterBackend

BACKENDS: dict[str, str] = {
    "lite": "segmenter.lite.backend:LiteBackend",  # MedSAM3-Lite, offline on CPU (the default)
    "sam3": "segmenter.sam3.backend:Sam3Backend",  # SAM 3 / MedSAM3 through transformers
    "remote": "segmenter.service.client:RemoteBackend",  # a segmenter service over HTTP
}


def backend_class(name: str) -> type[SegmenterBackend]:
    """The class registered under ``name``; a ValueError naming the choices for any other name."""
    if name not in BACKENDS:
        raise ValueError(f"unknown segmenter backend {name!r}; choose {', '.join(BACKENDS)}")
    module, _, attr = BACKENDS[name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, SegmenterBackend)):
        raise TypeError(f"{BACKENDS[name]} is not a SegmenterBackend")
    return cls


def build_backend(name: str = "lite", **options: Any) -> SegmenterBackend:
    """A new backend by name, with its own keyword options (``weights=``, ``config=``, ``url=``, ...)."""
    return backend_class(name)(**options)
