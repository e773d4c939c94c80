"""``build_backend("sam3")`` imports ``Sam3Backend`` from here; the code lives in ``segmenter.sam3``."""

from segmenter.sam3 import LoraMismatchError, PostProcess, Sam3Backend, Sam3Settings

__all__ = ["LoraMismatchError", "PostProcess", "Sam3Backend", "Sam3Settings"]
