"""A NIfTI volume (nibabel) -> values indexed (slice, row, col) and the affine that keeps them in place.

The slice axis is the file's last voxel axis unless the caller names another (0, 1 or 2). The two
in-plane axes are arranged the way a radiologist views a slice (DICOM's display convention): columns
run toward the patient's left (or posterior for a sagittal slice) and rows toward posterior (or
inferior), so an axial slice shows the patient's right on the image's left, anterior up, as the
shared 2D slice datasets do. Only axes are permuted and flipped; no voxel is resampled, and the
affine is composed with the same permutation, so each voxel keeps its world position.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import nibabel as nib
import numpy as np

from segmenter.image_io import ImageError, ImageTooLarge
from segmenter.study import Geometry

NIFTI_MAGICS = (b"n+1\x00", b"ni1\x00")  # NIfTI-1 at byte 344
NIFTI2_MAGICS = (b"n+2\x00", b"ni2\x00")  # NIfTI-2 at byte 4


class NiftiError(ImageError):
    """The NIfTI input cannot be used; the message says why."""


def is_nifti_header(head: bytes) -> bool:
    """True when ``head`` (the first 348+ bytes, uncompressed) starts a NIfTI-1 or NIfTI-2 header."""
    return head[344:348] in NIFTI_MAGICS or head[4:8] in NIFTI2_MAGICS


def gunzip_head(data: bytes | Path, size: int = 544) -> bytes:
    """The first ``size`` uncompressed bytes of a gzip stream; empty when it is not readable gzip."""
    try:
        with gzip.open(io.BytesIO(data) if isinstance(data, bytes) else data, "rb") as stream:
            return stream.read(size)
    except (OSError, EOFError):
        return b""


def _gunzip_bounded(data: bytes, name: str, limit: int) -> bytes:
    """Uploaded gzip bytes, decompressed no further than ``limit`` (a small gzip can unpack to gigabytes)."""
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
        raw = stream.read(limit + 1)
    if len(raw) > limit:
        raise ImageTooLarge(f"{name}: gzip unpacks to more than {limit} bytes, above what the voxel limit allows")
    return raw


def _open(source: Path | bytes, name: str, max_voxels: int) -> nib.Nifti1Image | nib.Nifti2Image:
    try:
        if isinstance(source, bytes):
            # header + float64 voxels at most (nibabel reads a file's gzip lazily; bytes need a bound)
            limit = 8 * max_voxels + (1 << 20)
            raw = _gunzip_bounded(source, name, limit) if source[:2] == b"\x1f\x8b" else source
            klass = nib.Nifti2Image if raw[4:8] in NIFTI2_MAGICS else nib.Nifti1Image
            return klass.from_bytes(raw)
        return nib.load(str(source))  # type: ignore[return-value]
    except ImageTooLarge:
        raise
    except Exception as exc:  # nibabel raises many types for broken files
        raise NiftiError(f"{name}: not a readable NIfTI file ({exc.__class__.__name__})") from None


def _shape3(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) > 3:
        raise NiftiError(f"{name}: a {len(dims)}D NIfTI ({'x'.join(map(str, dims))}, e.g. a time series); "
                         "pass one 3D volume")
    while len(dims) < 3:
        dims.append(1)
    return dims[0], dims[1], dims[2]


def _display_axes(affine: np.ndarray, slice_axis: int) -> tuple[tuple[int, int, int], tuple[bool, bool]]:
    """(slice, row, col) as file voxel axes, and whether rows / cols are flipped, for a radiological view."""
    in_plane = [axis for axis in range(3) if axis != slice_axis]
    dominant = {axis: int(np.argmax(np.abs(affine[:3, axis]))) for axis in in_plane}
    if dominant[in_plane[0]] == dominant[in_plane[1]]:  # oblique beyond 45 degrees: keep the file's order
        col_axis, row_axis = in_plane
    else:  # columns follow the lower world axis (x before y before z)
        col_axis, row_axis = sorted(in_plane, key=lambda axis: dominant[axis])
    # RAS: left, posterior and inferior are the negative directions; rows and columns run toward them
    flip_row = affine[dominant[row_axis], row_axis] > 0
    flip_col = affine[dominant[col_axis], col_axis] > 0
    return (slice_axis, row_axis, col_axis), (bool(flip_row), bool(flip_col))


def _reindex(affine: np.ndarray, shape: tuple[int, int, int], axes: tuple[int, int, int],
             flips: tuple[bool, bool, bool]) -> np.ndarray:
    """The affine of the permuted/flipped array: compose with the map new index -> file index."""
    new_to_old = np.zeros((4, 4))
    new_to_old[3, 3] = 1.0
    for new, old in enumerate(axes):
        if flips[new]:
            new_to_old[old, new] = -1.0
            new_to_old[old, 3] = shape[old] - 1
        else:
            new_to_old[old, new] = 1.0
    return affine @ new_to_old


def read_nifti(source: Path | bytes, name: str, max_voxels: int,
               slice_axis: int | None = None) -> tuple[np.ndarray, Geometry]:
    """(S, H, W) float32 values in file units (scaling applied) and their geometry (modality unknown)."""
    image = _open(source, name, max_voxels)
    shape = _shape3(tuple(int(d) for d in image.shape), name)
    total = shape[0] * shape[1] * shape[2]
    if total > max_voxels:
        raise ImageTooLarge(f"{name}: NIfTI volume is {'x'.join(map(str, shape))} = {total} voxels, "
                            f"above the limit of {max_voxels}")
    if total == 0:
        raise NiftiError(f"{name}: NIfTI volume has no voxels")
    if slice_axis is None:
        slice_axis = 2
    if slice_axis not in (0, 1, 2):
        raise NiftiError(f"slice_axis must be 0, 1 or 2 (a voxel axis of the file), got {slice_axis}")
    try:
        data = np.asarray(image.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as exc:  # RGB or complex voxel types, truncated data
        raise NiftiError(f"{name}: cannot read the NIfTI voxels ({exc.__class__.__name__})") from None
    affine = np.asarray(image.affine, dtype=np.float64)
    axes, (flip_row, flip_col) = _display_axes(affine, slice_axis)
    flips = (False, flip_row, flip_col)
    values = np.transpose(data, axes)
    values = values[:, ::-1 if flip_row else 1, ::-1 if flip_col else 1]
    new_affine = _reindex(affine, shape, axes, flips)
    norms = np.linalg.norm(new_affine[:3, :3], axis=0)
    geometry = Geometry(
        pixel_spacing=(float(norms[1]), float(norms[2])),
        slice_spacing=float(norms[0]) if values.shape[0] > 1 else None,
        affine=tuple((float(a), float(b), float(c), float(d)) for a, b, c, d in new_affine),
        modality=None,
    )
    return np.ascontiguousarray(values, dtype=np.float32), geometry
