"""A loaded study: the slices the segmenter sees, and the geometry that turns pixels into millimetres.

Every input (a PNG, a DICOM file or series, a NIfTI volume) becomes a ``Study``. A 2D image is a
study of one slice. Voxels are always indexed (slice, row, column), slices sorted along the slice
normal; ``Geometry.affine`` maps that index to RAS millimetres (NIfTI's world convention), so a
mask array of shape ``(slices, rows, columns)`` saved with that affine lands where the source is.
Nothing here holds a DICOM tag other than geometry and modality: the source headers that a DICOM
SEG export needs stay in ``Study.dicom_headers``, which is never logged, serialised or sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

SourceKind = Literal["image", "dicom", "nifti"]
# the catalog's (and the shared manifests') modality names that a DICOM Modality tag states, by that tag
DICOM_MODALITIES = {"CT": "ct", "MR": "mri"}


class Window(BaseModel):
    """A display window: values in [center - width/2, center + width/2] map to 0..255."""

    model_config = ConfigDict(frozen=True)

    center: float
    width: float = Field(gt=0)
    name: str = ""  # a preset's name ("lung", "abdomen", ...), "dicom" (the file's own), "percentile" or ""


class Geometry(BaseModel):
    """Where the voxels are. ``None`` fields are unknown (a photo has no spacing)."""

    model_config = ConfigDict(frozen=True)

    pixel_spacing: tuple[float, float] | None = None  # mm between rows, between columns
    slice_spacing: float | None = None  # mm between slice centres (volumes); None for one slice
    affine: tuple[tuple[float, float, float, float], ...] | None = None  # 4x4, (slice, row, col) -> RAS mm
    modality: str | None = None  # DICOM Modality ("CT", "MR", "CR", "DX", ...) or None when not known

    @property
    def pixel_area_mm2(self) -> float | None:
        if self.pixel_spacing is None:
            return None
        return self.pixel_spacing[0] * self.pixel_spacing[1]

    @property
    def voxel_volume_ml(self) -> float | None:
        if self.pixel_spacing is None or self.slice_spacing is None:
            return None
        return self.pixel_spacing[0] * self.pixel_spacing[1] * self.slice_spacing / 1000.0

    def affine_array(self) -> np.ndarray | None:
        return None if self.affine is None else np.asarray(self.affine, dtype=np.float64)


@dataclass
class Study:
    """Display slices (windowed, RGB uint8) plus the source values and geometry."""

    slices: np.ndarray  # (S, H, W, 3) uint8: what the segmenter and the overlays see
    geometry: Geometry = field(default_factory=Geometry)
    kind: SourceKind = "image"
    values: np.ndarray | None = None  # (S, H, W) float32 in source units (HU for CT) where known
    window: Window | None = None  # the window that made ``slices`` from ``values``
    dicom_headers: list[Any] = field(default_factory=list, repr=False)  # pydicom datasets, pixel data removed

    def __post_init__(self) -> None:
        if self.slices.ndim != 4 or self.slices.shape[3] != 3 or self.slices.dtype != np.uint8:
            raise ValueError(f"Study.slices must be (S, H, W, 3) uint8, got {self.slices.shape} {self.slices.dtype}")

    @property
    def is_volume(self) -> bool:
        return self.slices.shape[0] > 1

    @property
    def shape(self) -> tuple[int, int, int]:
        s, h, w, _ = self.slices.shape
        return s, h, w

    @classmethod
    def from_rgb(cls, rgb: np.ndarray, geometry: Geometry | None = None) -> Study:
        """A 2D RGB image as a one-slice study."""
        return cls(slices=rgb[None], geometry=geometry or Geometry())
