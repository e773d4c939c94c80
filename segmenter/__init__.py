"""Segmentation backends behind one interface. ``Segmenter()`` is MedSAM3-Lite, offline on CPU."""

from segmenter.backends import BACKENDS, build_backend
from segmenter.base import SegmenterBackend
from segmenter.facade import Segmenter, SegmenterHandle
from segmenter.image_io import ImageError
from segmenter.study_io import load_image
from segmenter.types import Box, Instance, Point, Prompt, SegmentationResult

__all__ = [
    "BACKENDS",
    "Box",
    "ImageError",
    "Instance",
    "Point",
    "Prompt",
    "SegmentationResult",
    "Segmenter",
    "SegmenterBackend",
    "SegmenterHandle",
    "build_backend",
    "load_image",
]
