"""One loader for every input: a DICOM file, series folder or zip, a NIfTI volume, or a 2D image -> ``Study``.

The kind of a file is read from its content (DICOM's "DICM" preamble, zip's and gzip's magic bytes,
NIfTI's header magic), not only from its name. Values keep their source units (Hounsfield units for
CT after RescaleSlope/Intercept); the display slices come from one window for the whole volume:

- the caller's ``window`` (a preset name or "center,width") always wins;
- CT: the file's own WindowCenter/WindowWidth, else the preset that suits ``concept`` (windows.py);
- anything else (MR, PET, a NIfTI of unknown units): the 0.5-99.5 percentile window of the volume.

NaN or infinite voxels become the volume's lowest finite value (background), with a warning.
A zip is read in memory: nothing of the user's data is written to disk.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from segmenter import image_io
from segmenter.dicom_series import DicomError, DicomSource, DicomVolume, affine_ras, read_series
from segmenter.image_io import ImageError
from segmenter.nifti_io import gunzip_head, is_nifti_header, read_nifti
from segmenter.study import Geometry, Study, Window
from segmenter.windows import apply_window, parse_window, percentile_window, preset_for_concept

MAX_VOXELS = 160_000_000  # e.g. 600 CT slices of 512x512; values (float32) and display (RGB) fit in ~1.1 GB
MAX_ZIP_BYTES = 2 * 1024**3  # declared uncompressed size of a zip's members, at most
ZIP_BYTES_PER_VOXEL = 8  # and at most this per voxel of the caller's budget (+ 64 MiB of headers)
MAX_FILES = 10_000  # files in a series folder or zip
HEAD_BYTES = 544  # enough for DICOM's preamble (132) and a NIfTI-1 (348) or NIfTI-2 (540) header
CT_AIR_BELOW = -900.0  # a NIfTI whose values reach this is read as CT in Hounsfield units (air: -1000)
StudyInput = str | Path | bytes | np.ndarray | Image.Image


class StudyError(ImageError):
    """The input could not be loaded as a study; the message says why."""


def sniff(head: bytes, name: str = "") -> str:
    """'dicom', 'zip', 'nifti' or 'image' from a file's first bytes (and, for preamble-less DICOM, its name)."""
    if head[128:132] == b"DICM":
        return "dicom"
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return "zip"
    if is_nifti_header(head) or head[:2] == b"\x1f\x8b" and name.lower().endswith(".nii.gz"):
        return "nifti"
    if name.lower().endswith(".dcm"):  # old DICOM without the 128-byte preamble; pydicom decides
        return "dicom"
    return "image"


def _skipped(name: str) -> bool:
    """Files that live beside a series but are not part of it: hidden files, macOS zip metadata, DICOMDIR."""
    parts = Path(name).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or Path(name).name.upper() == "DICOMDIR"


def _dicom_items(entries: list[tuple[str, DicomSource]], heads: list[bytes]) -> list[tuple[str, DicomSource]]:
    """The series' files; a clear error naming the first file that is no DICOM."""
    items = []
    for (name, source), head in zip(entries, heads, strict=True):
        if _skipped(name):
            continue
        if sniff(head, name) != "dicom":
            raise DicomError(f"{name}: not a DICOM file; a series folder or zip must hold DICOM files only")
        items.append((name, source))
    if not items:
        raise DicomError("no DICOM file found")
    return items


def _folder_items(folder: Path) -> list[tuple[str, DicomSource]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())  # sorted only for repeatable errors
    if len(files) > MAX_FILES:
        raise DicomError(f"{folder.name}: holds {len(files)} files, above the limit of {MAX_FILES}")
    entries: list[tuple[str, DicomSource]] = [(str(p.relative_to(folder)), p) for p in files]
    heads = []
    for path in files:
        with path.open("rb") as stream:
            heads.append(stream.read(HEAD_BYTES))
    if not any(sniff(head, name) == "dicom" for (name, _), head in zip(entries, heads, strict=True)):
        raise DicomError(f"{folder.name}: is a folder, not an image file, and holds no DICOM file "
                         "(a DICOM series folder would be read)")
    return _dicom_items(entries, heads)


def _zip_limit(max_voxels: int) -> int:
    return min(MAX_ZIP_BYTES, ZIP_BYTES_PER_VOXEL * max_voxels + (64 << 20))


def _zip_items(source: Path | bytes, name: str, max_voxels: int) -> list[tuple[str, DicomSource]]:
    """The zip's members, read into memory (never extracted to disk), after checking their declared sizes."""
    try:
        with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as archive:
            members = [m for m in archive.infolist() if not m.is_dir() and not _skipped(m.filename)]
            if len(members) > MAX_FILES:
                raise DicomError(f"{name}: zip holds {len(members)} files, above the limit of {MAX_FILES}")
            total, limit = sum(m.file_size for m in members), _zip_limit(max_voxels)
            if total > limit:  # zipfile never reads a member past its declared size, so this bounds memory
                raise image_io.ImageTooLarge(f"{name}: zip unpacks to {total} bytes, above the limit of {limit}")
            entries: list[tuple[str, DicomSource]] = [(m.filename, archive.read(m)) for m in members]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, NotImplementedError, OSError) as exc:
        raise DicomError(f"{name}: not a readable zip ({exc.__class__.__name__})") from None
    heads = [data[:HEAD_BYTES] for _, data in entries]  # type: ignore[index]
    return _dicom_items(entries, heads)


def _clean_nonfinite(values: np.ndarray) -> np.ndarray:
    try:
        return image_io.nonfinite_as_background(values.astype(np.float32, copy=False), unit="voxel")
    except ImageError as exc:  # a study's own error type, as for every other unreadable study
        raise StudyError(str(exc)) from None


def _choose_window(values: np.ndarray, modality: str | None, window: str | Window | None,
                   concept: str | None, own: tuple[float, float] | None) -> Window:
    if window is not None:
        return parse_window(window)
    if (modality or "").upper() == "CT":
        if own is not None:
            return Window(center=own[0], width=own[1], name="dicom")
        return preset_for_concept(concept)
    return percentile_window(values)


def _grey_study(values: np.ndarray, geometry: Geometry, kind: str, window: Window, invert: bool = False,
                headers: list | None = None) -> Study:
    grey = apply_window(values, window, invert=invert)
    slices = np.repeat(grey[..., None], 3, axis=3)
    return Study(slices=slices, geometry=geometry, kind=kind, values=values, window=window,  # type: ignore[arg-type]
                 dicom_headers=headers or [])


def _dicom_study(volume: DicomVolume, window: str | Window | None, concept: str | None) -> Study:
    first = volume.frames[0]
    geometry = Geometry(pixel_spacing=first.pixel_spacing,
                        slice_spacing=volume.slice_spacing if len(volume.frames) > 1 else None,
                        affine=affine_ras(volume), modality=volume.modality)
    if volume.rgb is not None:  # colour (ultrasound, photographs): shown as stored, no window
        return Study(slices=volume.rgb, geometry=geometry, kind="dicom", dicom_headers=volume.headers)
    assert volume.values is not None
    values = _clean_nonfinite(volume.values)
    chosen = _choose_window(values, volume.modality, window, concept, first.window)
    return _grey_study(values, geometry, "dicom", chosen, invert=volume.monochrome1, headers=volume.headers)


def nifti_modality(values: np.ndarray, given: str | None) -> str | None:
    """A NIfTI states no modality: ``given`` where the caller knows it, else CT where the values reach
    ``CT_AIR_BELOW`` (Hounsfield units: air is -1000; MR and PET intensities are not that negative), else unknown."""
    if given:
        return given.strip().upper()
    return "CT" if values.size and float(values.min()) <= CT_AIR_BELOW else None


def _nifti_study(source: Path | bytes, name: str, window: str | Window | None, concept: str | None,
                 max_voxels: int, slice_axis: int | None, modality: str | None) -> Study:
    values, geometry = read_nifti(source, name, max_voxels, slice_axis)
    values = _clean_nonfinite(values)
    modality = nifti_modality(values, modality)
    if modality:
        geometry = geometry.model_copy(update={"modality": modality})
    return _grey_study(values, geometry, "nifti", _choose_window(values, modality, window, concept, None))


def _image_study(source: StudyInput, max_voxels: int) -> Study:
    return Study.from_rgb(image_io.read_image(source, max_pixels=max_voxels))


def _head(path: Path) -> bytes:
    with path.open("rb") as stream:
        return stream.read(HEAD_BYTES)


def _kind_of(source: Path | bytes, name: str) -> str:
    head = source[:HEAD_BYTES] if isinstance(source, bytes) else _head(source)
    kind = sniff(head, name)
    if kind == "image" and head[:2] == b"\x1f\x8b" and is_nifti_header(gunzip_head(source)):
        return "nifti"  # a gzipped NIfTI under another name
    return kind


def _path(source: str | Path) -> Path:
    path = Path(source)
    if not path.exists():
        raise StudyError(f"{path}: no such file or folder")
    if path.is_file() and path.stat().st_size == 0:
        raise StudyError(f"{path}: file is empty")
    return path


def load_study(source: StudyInput, *, window: str | Window | None = None, concept: str | None = None,
               max_pixels: int = MAX_VOXELS, slice_axis: int | None = None, modality: str | None = None) -> Study:
    """Load any supported input as a ``Study``; raise ``ImageError`` (``ImageTooLarge``) naming the problem.

    ``max_pixels`` bounds the voxels of the whole study and is checked from headers before any pixel is
    decoded. ``slice_axis`` (0, 1 or 2) picks a NIfTI's slice axis among its voxel axes (default: the
    last). ``modality`` tells a NIfTI's modality ("CT" makes it use the CT windows and, for abdominal organs, the CT
    expert); without it a NIfTI whose values reach -900 is taken for CT (``nifti_modality``). DICOM states its own.
    """
    if isinstance(source, (np.ndarray, Image.Image)):
        return _image_study(source, max_pixels)
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        if not data:
            raise StudyError("image bytes are empty")
        name, target = "uploaded data", data
    elif isinstance(source, (str, Path)):
        path = _path(source)
        if path.is_dir():
            volume = read_series(_folder_items(path), max_pixels)
            return _dicom_study(volume, window, concept)
        name, target = str(path), path  # type: ignore[assignment]
    else:
        raise StudyError(f"unsupported image type {type(source).__name__}; pass a path, bytes, numpy array or "
                         "PIL image")
    kind = _kind_of(target, name)
    if kind == "dicom":
        return _dicom_study(read_series([(name, target)], max_pixels), window, concept)
    if kind == "zip":
        return _dicom_study(read_series(_zip_items(target, name, max_pixels), max_pixels), window, concept)
    if kind == "nifti":
        return _nifti_study(target, name, window, concept, max_pixels, slice_axis, modality)
    return _image_study(target, max_pixels)


def load_image(image: StudyInput, max_pixels: int = image_io.MAX_PIXELS) -> np.ndarray:
    """One 2D image as an HxWx3 uint8 array, from anything ``load_study`` reads (a one-slice DICOM too): the
    loader of the 2D entry points. A volume is refused with a pointer to ``load_study``."""
    if isinstance(image, (np.ndarray, Image.Image)):
        return image_io.read_image(image, max_pixels)
    study = load_study(image, max_pixels=max_pixels)
    if study.is_volume:
        raise StudyError(f"a volume of {study.shape[0]} slices; a 2D entry point takes one image, load volumes with "
                         "segmenter.study_io.load_study (the volume path)")
    return study.slices[0]
