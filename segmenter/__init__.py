"""Segmentation backends behind one interface. ``Segmenter()`` is MedSAM3-Lite, offline on CPU."""

from segmenter.base import Segmenter, SegmenterBackend, build_backend
from segmenter.image_io import ImageError, load_image
from segmenter.types import Box, Instance, Point, Prompt, SegmentationResult

__all__ = [
    "Box",
    "ImageError",
    "Instance",
    "Point",
    "Prompt",
    "SegmentationResult",
    "Segmenter",
    "SegmenterBackend",
    "build_backend",
    "load_image",
]
