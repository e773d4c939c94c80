"""One DICOM series (files, or frames of a multi-frame file) -> source values sorted along the slice normal.

pydicom reads every file; nothing here parses DICOM by hand. Headers are read first (no pixel
data), so a mixed folder, a missing slice or an oversized series is refused before any pixel is
decoded. Slices are ordered by their position along the slice normal (ImageOrientationPatient's
row x column cosines, dotted with ImagePositionPatient), never by file name or InstanceNumber.
Error messages name counts, sizes and millimetres, never a tag value that could identify a patient.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from segmenter.image_io import ImageError, ImageTooLarge

DicomSource = Path | bytes  # a file on disk, or a file's bytes (an upload, a zip member)
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
GAP_FACTOR = 1.5  # a step over 1.5x the median step is a missing slice
SPACING_TOLERANCE = 0.05  # steps may differ from the median by 5 % (rounding in positions)


class DicomError(ImageError):
    """The DICOM input cannot be used as one series; the message says why."""


@dataclass
class Frame:
    """One 2D image of the series: a whole single-frame file, or one frame of a multi-frame file."""

    file: int  # index into the series' headers
    frame: int | None  # frame number in a multi-frame file, None for a single-frame file
    position: np.ndarray | None  # ImagePositionPatient, LPS mm
    orientation: np.ndarray | None  # ImageOrientationPatient (row cosine, column cosine)
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) mm
    slope: float = 1.0
    intercept: float = 0.0
    window: tuple[float, float] | None = None  # the file's own (center, width), first value


@dataclass
class DicomVolume:
    values: np.ndarray | None  # (S, H, W) float32 after the modality LUT (HU for CT); None for colour
    rgb: np.ndarray | None  # (S, H, W, 3) uint8 for colour images (ultrasound, photos), else None
    frames: list[Frame]  # in slice order
    headers: list[Dataset]  # one per file, pixel data removed, in slice order
    modality: str | None
    monochrome1: bool
    slice_spacing: float | None  # mm between slices: from positions, else SpacingBetweenSlices/SliceThickness
    fallback_spacing: float | None = None  # SpacingBetweenSlices or SliceThickness, for a one-slice affine


def _open(source: DicomSource) -> Path | io.BytesIO:
    return io.BytesIO(source) if isinstance(source, bytes) else source


def read_header(name: str, source: DicomSource) -> Dataset:
    """Header only (pixel data not read); a clear error when the file is no readable DICOM image."""
    try:
        ds = pydicom.dcmread(_open(source), stop_before_pixels=True, force=True)
    except Exception as exc:  # pydicom raises many types for broken files
        raise DicomError(f"{name}: not a readable DICOM file ({exc.__class__.__name__})") from None
    if is_dicomdir(ds):
        return ds  # dropped by read_series
    if "Rows" not in ds or "Columns" not in ds:
        raise DicomError(f"{name}: DICOM file holds no image (no Rows/Columns; a report or other non-image object)")
    return ds


def is_dicomdir(ds: Dataset) -> bool:
    return str(getattr(ds, "SOPClassUID", "")) == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds


def _floats(value: Any, count: int) -> np.ndarray | None:
    try:
        array = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.size == count and np.isfinite(array).all() else None


def _first(value: Any) -> float | None:
    """DICOM multi-valued numbers (WindowCenter "40\\400") -> the first, as float."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        value = value[0] if len(value) else None
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _lookup(ds: Dataset, frame: int | None, sequence: str, attr: str) -> Any:
    """An attribute from the per-frame functional group, else the shared one, else the top level."""
    groups = []
    if "PerFrameFunctionalGroupsSequence" in ds:  # a one-frame enhanced file has one item: frame None is 0
        per_frame = ds.PerFrameFunctionalGroupsSequence
        if (frame or 0) < len(per_frame):
            groups.append(per_frame[frame or 0])
    if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    for group in groups:
        items = group.get(sequence)
        if items and attr in items[0]:
            return items[0].get(attr)
    return ds.get(attr)


def _spacing(ds: Dataset, frame: int | None) -> tuple[float, float] | None:
    spacing = _floats(_lookup(ds, frame, "PixelMeasuresSequence", "PixelSpacing") or [], 2)
    if spacing is None:  # projection radiographs: spacing at the detector
        spacing = _floats(ds.get("ImagerPixelSpacing") or [], 2)
    if spacing is None or (spacing <= 0).any():
        return None
    return float(spacing[0]), float(spacing[1])


def _frame(ds: Dataset, file: int, frame: int | None) -> Frame:
    slope = _first(_lookup(ds, frame, "PixelValueTransformationSequence", "RescaleSlope"))
    intercept = _first(_lookup(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept"))
    center = _first(_lookup(ds, frame, "FrameVOILUTSequence", "WindowCenter"))
    width = _first(_lookup(ds, frame, "FrameVOILUTSequence", "WindowWidth"))
    position = _lookup(ds, frame, "PlanePositionSequence", "ImagePositionPatient")
    orientation = _lookup(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
    return Frame(
        file=file, frame=frame,
        position=_floats(position or [], 3), orientation=_floats(orientation or [], 6),
        pixel_spacing=_spacing(ds, frame),
        slope=1.0 if slope is None or slope == 0 else slope,
        intercept=intercept or 0.0,
        window=(center, width) if center is not None and width is not None and width > 0 else None,
    )


def frames_of(ds: Dataset, file: int) -> list[Frame]:
    count = int(ds.get("NumberOfFrames") or 1)
    if count <= 1:
        return [_frame(ds, file, None)]
    return [_frame(ds, file, f) for f in range(count)]


def check_one_series(headers: list[Dataset]) -> None:
    uids: dict[str, int] = {}
    for ds in headers:
        uid = str(ds.get("SeriesInstanceUID", ""))
        uids[uid] = uids.get(uid, 0) + 1
    if len(uids) > 1:
        counts = ", ".join(str(n) for n in sorted(uids.values(), reverse=True))
        raise DicomError(f"the input holds {len(uids)} DICOM series (different SeriesInstanceUID; files per "
                         f"series: {counts}); load one series at a time")
    sizes = {(int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1))) for ds in headers}
    if len(sizes) > 1:
        shown = ", ".join(f"{r}x{c}" + (f"x{s}" if s != 1 else "") for r, c, s in sorted(sizes))
        raise DicomError(f"inconsistent image size across the series ({shown}); a series must have one size")


def _check_frames(frames: list[Frame]) -> None:
    orientations = [f.orientation for f in frames if f.orientation is not None]
    if orientations and (len(orientations) < len(frames) or not all(
            np.allclose(o, orientations[0], atol=1e-3) for o in orientations)):
        raise DicomError("inconsistent orientation across the series (ImageOrientationPatient differs between "
                         "slices); load one orientation at a time")
    spacings = [f.pixel_spacing for f in frames]
    reference = spacings[0]
    if len({s is None for s in spacings}) > 1 or reference is not None and any(
            s is not None and not np.allclose(s, reference, rtol=1e-3) for s in spacings):
        raise DicomError("inconsistent pixel spacing across the series (PixelSpacing differs between slices)")


def _normal(orientation: np.ndarray) -> np.ndarray:
    normal = np.cross(orientation[:3], orientation[3:])
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        raise DicomError("ImageOrientationPatient is degenerate (row and column directions are parallel)")
    return normal / norm


def _check_steps(steps: np.ndarray) -> float:
    """The median step between sorted slices (mm); a clear error for duplicates, gaps and uneven spacing."""
    if (steps < 1e-3).any():
        raise DicomError(f"{int((steps < 1e-3).sum())} slice(s) repeat another slice's position along the slice "
                         "normal (several echoes, phases or acquisitions in one series?); load one at a time")
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if gaps.size:
        k = int(gaps[0])
        missing = max(1, round(steps[k] / median) - 1)
        raise DicomError(f"missing slice: a gap of {steps[k]:.2f} mm after slice {k + 1} of {steps.size + 1}, "
                         f"where the series' step is {median:.2f} mm (about {missing} slice(s) missing)")
    uneven = np.abs(steps - median) > max(SPACING_TOLERANCE * median, 0.01)
    if uneven.any():
        raise DicomError(f"inconsistent slice spacing: steps from {steps.min():.2f} to {steps.max():.2f} mm "
                         f"(median {median:.2f} mm)")
    return median


def order_frames(frames: list[Frame]) -> tuple[list[Frame], float | None]:
    """Frames sorted along the slice normal, and the step between them (None for one frame)."""
    _check_frames(frames)
    if len(frames) == 1:
        return frames, None
    first = frames[0]
    if first.orientation is None or any(f.position is None for f in frames):
        if len({f.file for f in frames}) == 1:  # one multi-frame file without positions: its frame order
            return frames, None
        raise DicomError(f"{len(frames)} slices without ImagePositionPatient/ImageOrientationPatient: "
                         "cannot order them as a volume")
    normal = _normal(first.orientation)
    distances = np.array([float(np.dot(normal, f.position)) for f in frames])  # type: ignore[arg-type]
    order = np.argsort(distances, kind="stable")
    step = _check_steps(np.diff(distances[order]))
    return [frames[i] for i in order], step


def check_budget(headers: list[Dataset], frame_count: int, max_voxels: int) -> None:
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    total = rows * cols * frame_count
    if total > max_voxels:
        raise ImageTooLarge(f"DICOM series is {frame_count} slices of {rows}x{cols} = {total} voxels, "
                            f"above the limit of {max_voxels}")
    if total == 0:
        raise DicomError(f"DICOM image has no pixels ({rows}x{cols})")


def _pixels(name: str, source: DicomSource) -> np.ndarray:
    try:
        ds = pydicom.dcmread(_open(source), force=True)
    except Exception as exc:
        raise DicomError(f"{name}: not a readable DICOM file ({exc.__class__.__name__})") from None
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # a compressed syntax without its decoder, truncated pixel data, ...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        label = getattr(syntax, "name", "unknown transfer syntax")
        raise DicomError(f"{name}: cannot decode the pixel data ({label}; {exc.__class__.__name__}); compressed "
                         "DICOM may need pylibjpeg or gdcm installed") from None


def _to_rgb8(pixels: np.ndarray, bits: int) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    top = float(2 ** max(bits, 1) - 1)
    return (np.clip(pixels.astype(np.float32) / top, 0, 1) * 255).round().astype(np.uint8)


def _place(volume: np.ndarray, slot: int, image: np.ndarray, frame: Frame, colour: bool, bits: int) -> None:
    if image.shape[:2] != volume.shape[1:3]:
        raise DicomError(f"a frame's pixel data is {image.shape[0]}x{image.shape[1]}, not the header's "
                         f"{volume.shape[1]}x{volume.shape[2]}")
    if colour:
        volume[slot] = _to_rgb8(image, bits)
    else:
        volume[slot] = image.astype(np.float32) * np.float32(frame.slope) + np.float32(frame.intercept)


def _fill(items: list[tuple[str, DicomSource]], ordered: list[Frame], headers: list[Dataset]) -> np.ndarray:
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    colour = int(headers[0].get("SamplesPerPixel", 1)) > 1
    bits = int(headers[0].get("BitsStored") or headers[0].get("BitsAllocated") or 8)
    shape = (len(ordered), rows, cols, 3) if colour else (len(ordered), rows, cols)
    volume = np.empty(shape, dtype=np.uint8 if colour else np.float32)
    slots: dict[int, list[tuple[int, Frame]]] = {}
    for slot, frame in enumerate(ordered):
        slots.setdefault(frame.file, []).append((slot, frame))
    for file, (name, source) in enumerate(items):
        pixels = _pixels(name, source)
        for slot, frame in slots.get(file, []):
            if frame.frame is None:
                _place(volume, slot, pixels, frame, colour, bits)
            elif pixels.ndim >= 3 and frame.frame < pixels.shape[0] and pixels.shape[0] > 1:
                _place(volume, slot, pixels[frame.frame], frame, colour, bits)
            else:
                raise DicomError(f"{name}: the pixel data holds fewer frames than NumberOfFrames says")
    return volume


def _fallback_spacing(ds: Dataset) -> float | None:
    for attr in ("SpacingBetweenSlices", "SliceThickness"):
        value = _first(_lookup(ds, 0 if "PerFrameFunctionalGroupsSequence" in ds else None,
                               "PixelMeasuresSequence", attr))
        if value is not None and value > 0:
            return abs(value)
    return None


def read_series(items: list[tuple[str, DicomSource]], max_voxels: int) -> DicomVolume:
    """Files of one series (in any order) -> a volume in slice order, checked before decoding pixels."""
    if not items:
        raise DicomError("no DICOM image found")
    headers = [read_header(name, source) for name, source in items]
    kept = [i for i, ds in enumerate(headers) if not is_dicomdir(ds)]  # a DICOMDIR indexes files, holds no image
    items, headers = [items[i] for i in kept], [headers[i] for i in kept]
    if not items:
        raise DicomError("no DICOM image found (only a DICOMDIR index)")
    check_one_series(headers)
    frames = [frame for i, ds in enumerate(headers) for frame in frames_of(ds, i)]
    check_budget(headers, len(frames), max_voxels)
    ordered, step = order_frames(frames)
    volume = _fill(items, ordered, headers)
    files_in_order = list(dict.fromkeys(frame.file for frame in ordered))
    first = headers[0]
    colour = volume.ndim == 4
    slice_spacing = step if step is not None else (_fallback_spacing(first) if len(ordered) > 1 else None)
    return DicomVolume(
        values=None if colour else volume, rgb=volume if colour else None, frames=ordered,
        headers=[headers[i] for i in files_in_order], modality=str(first.get("Modality") or "") or None,
        monochrome1=str(first.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1",
        slice_spacing=slice_spacing, fallback_spacing=_fallback_spacing(first),
    )


def affine_ras(volume: DicomVolume) -> tuple[tuple[float, float, float, float], ...] | None:
    """4x4 mapping (slice, row, col) -> RAS mm: DICOM's LPS position and cosines with x and y negated."""
    frames = volume.frames
    first = frames[0]
    if first.orientation is None or first.position is None or first.pixel_spacing is None:
        return None
    row_cosine, col_cosine = first.orientation[:3], first.orientation[3:]
    last = frames[-1]
    if len(frames) > 1 and last.position is not None and not np.allclose(last.position, first.position):
        slice_vector = (last.position - first.position) / (len(frames) - 1)  # keeps a gantry tilt exact
    else:
        slice_vector = _normal(first.orientation) * (volume.slice_spacing or volume.fallback_spacing or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = slice_vector
    lps[:3, 1] = col_cosine * first.pixel_spacing[0]  # down the rows: the column cosine, row spacing
    lps[:3, 2] = row_cosine * first.pixel_spacing[1]  # along a row: the row cosine, column spacing
    lps[:3, 3] = first.position
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return tuple((float(a), float(b), float(c), float(d)) for a, b, c, d in ras)
