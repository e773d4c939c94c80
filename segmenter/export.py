"""Masks out of the agent in the field's formats: a NIfTI label volume per concept, a DICOM SEG per study.

Both keep the source geometry, so they overlay the source in 3D Slicer, ITK-SNAP or OHIF:

- ``save_nifti`` writes a mask (slice, row, col) with ``Geometry.affine`` (index -> RAS mm), the
  voxel axes stored as (col, row, slice), the order ITK, 3D Slicer and dcm2niix give a DICOM
  series, or, with ``like``, on the exact voxel grid of the source NIfTI.
- ``save_dicom_seg`` writes a BINARY DICOM Segmentation (highdicom), one segment per concept, each
  frame referencing the source image (or frame) it was drawn on.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
from highdicom.utils import get_plane_positions_of_image, get_plane_positions_of_series
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from segmenter.study import Geometry, Study

PACKAGE = "medsam3-agent"
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# (slice, row, col) index -> (col, row, slice) index: the voxel order a DICOM series has in ITK/Slicer
_COL_ROW_SLICE = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


class ExportError(ValueError):
    """The mask or the study cannot be exported; the message says why."""


def _as_labels(mask: np.ndarray, what: str) -> np.ndarray:
    """(S, H, W) uint8: bool becomes 0/1, unsigned integer labels are kept (a float mask is refused)."""
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise ExportError(f"{what}: a mask must be (slices, rows, cols), got {mask.ndim} dimensions")
    if mask.dtype == np.bool_:
        return mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.integer):
        raise ExportError(f"{what}: a mask must be bool or integer labels, got {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ExportError(f"{what}: mask labels must lie in 0..255")
    return mask.astype(np.uint8)


def _affine_or_default(geometry: Geometry) -> np.ndarray:
    affine = geometry.affine_array()
    if affine is not None:
        if affine.shape != (4, 4) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
            raise ExportError("Geometry.affine must be an invertible 4x4 matrix")
        return affine
    row, col = geometry.pixel_spacing or (1.0, 1.0)
    step = geometry.slice_spacing or 1.0
    # identity orientation: slice -> +z (superior), row -> +y (anterior), col -> +x (right), origin 0
    return np.array([[0, 0, col, 0], [0, row, 0, 0], [step, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def _on_grid(labels: np.ndarray, affine: np.ndarray, like: nib.spatialimages.SpatialImage) -> np.ndarray:
    """``labels`` (index -> world by ``affine``) moved onto ``like``'s voxel grid by axis swaps and flips only."""
    shape = tuple(int(d) for d in like.shape[:3])
    to_like = np.linalg.inv(np.asarray(like.affine, dtype=np.float64)) @ affine  # our index -> like's index
    linear, offset = to_like[:3, :3], to_like[:3, 3]
    axes = np.argmax(np.abs(linear), axis=1)  # like's axis f runs along our axis axes[f]
    signs = np.sign(linear[np.arange(3), axes])
    expected = np.zeros((3, 3))
    expected[np.arange(3), axes] = signs
    if len(set(axes.tolist())) != 3 or not np.allclose(linear, expected, atol=1e-3):
        raise ExportError("the mask's voxel grid is not the reference's grid (not an axis swap or flip of it)")
    moved = np.transpose(labels, axes.tolist())
    starts = np.where(signs > 0, 0.0, np.array(moved.shape) - 1.0)
    if moved.shape != shape or not np.allclose(offset, starts, atol=1e-3):
        raise ExportError(f"the mask ({'x'.join(map(str, labels.shape))}) does not cover the reference's voxel "
                          f"grid ({'x'.join(map(str, shape))})")
    flips = tuple(slice(None, None, -1) if sign < 0 else slice(None) for sign in signs)
    return np.ascontiguousarray(moved[flips])


def _load(path: str | Path) -> nib.spatialimages.SpatialImage:
    image = nib.load(str(path))
    if not isinstance(image, nib.spatialimages.SpatialImage):
        raise ExportError("the reference is not an image with an affine")
    return image


def save_nifti(mask: np.ndarray, geometry: Geometry, path: str | Path, *,
               like: str | Path | nib.spatialimages.SpatialImage | None = None) -> Path:
    """Write one concept's mask as a NIfTI label volume (uint8, 1 = inside; ``.nii.gz`` compresses).

    ``mask`` is (slices, rows, cols) as the study holds it (a 2D mask is one slice). Its world
    position comes from ``geometry.affine`` (index -> RAS mm). The voxel axes are written as (col,
    row, slice), the grid ITK, 3D Slicer and ITK-SNAP build from a DICOM series, so a mask of DICOM
    input loads as a segmentation of the series. With ``like`` (the source NIfTI, a path or a nibabel
    image) the mask is written on that file's own voxel grid and affine, found by swapping and
    flipping axes only (an ``ExportError`` if the grids do not coincide): ITK-SNAP then loads it on
    the source NIfTI as well.

    A geometry without an affine (a photo, or spacing only) gets one built from the spacing (1 mm
    where unknown) with an identity orientation and origin 0: sizes are right, but the position is
    not the patient's; such a file overlays only an image written the same way.
    """
    labels = _as_labels(mask, "save_nifti")
    affine = _affine_or_default(geometry)
    if like is not None:
        reference = _load(like) if isinstance(like, (str, Path)) else like
        data, out_affine = _on_grid(labels, affine, reference), np.asarray(reference.affine, dtype=np.float64)
    else:
        data, out_affine = np.ascontiguousarray(np.transpose(labels, (2, 1, 0))), affine @ _COL_ROW_SLICE
    image = nib.Nifti1Image(data, out_affine)
    image.set_data_dtype(np.uint8)
    image.header.set_xyzt_units("mm")
    code = "scanner" if geometry.affine is not None else "aligned"  # aligned: a frame of its own, not the patient's
    image.set_sform(out_affine, code=code)
    image.set_qform(out_affine, code=code)
    path = Path(path)
    nib.save(image, str(path))
    return path


# concept -> (segmented property category, type), SNOMED CT codes from pydicom's DICOM code dictionary
# (codes.SCT.<Name>), plus the paired organs by side (SCT codes as in DICOM CID 7150's anatomic structures)
_ORGANS = ("liver", "spleen", "kidney", "pancreas", "stomach", "gallbladder", "aorta", "heart", "brain", "lung")
_LESIONS = {"brain tumor": "Neoplasm", "tumor": "Neoplasm", "tumor core": "Neoplasm", "enhancing tumor": "Neoplasm",
            "mass": "Mass", "lesion": "Lesion", "edema": "Edema"}
_SIDED = {"left lung": "44029006", "right lung": "3341006", "left kidney": "18639004", "right kidney": "9846003"}
_ANATOMY = codes.SCT.AnatomicalStructure
_CODES: dict[str, tuple[hd.sr.CodedConcept, hd.sr.CodedConcept]] = {
    **{organ: (_ANATOMY, getattr(codes.SCT, organ.capitalize())) for organ in _ORGANS},
    "lungs": (_ANATOMY, codes.SCT.Lung),
    **{name: (_ANATOMY, hd.sr.CodedConcept(code, "SCT", name.capitalize())) for name, code in _SIDED.items()},
    **{name: (codes.SCT.MorphologicallyAbnormalStructure, getattr(codes.SCT, code)) for name, code in _LESIONS.items()},
}
_FALLBACK = (codes.SCT.Tissue, codes.SCT.Tissue)


def concept_codes(concept: str) -> tuple[hd.sr.CodedConcept, hd.sr.CodedConcept]:
    """(segmented property category, type) for a concept; "Tissue" for a concept not in the table."""
    key = " ".join(concept.lower().replace("_", " ").split())
    for name in (key, key.removeprefix("left ").removeprefix("right ")):
        if name in _CODES:
            return _CODES[name]
    return _FALLBACK


def _label(concept: str, number: int) -> str:
    """A DICOM LO value: no backslash (the value separator) or control character, at most 64 characters."""
    text = "".join(" " if ch == "\\" or not ch.isprintable() else ch for ch in concept)
    return " ".join(text.split())[:64] or f"segment {number}"


def _version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def _source_positions(headers: list[Dataset]) -> tuple[list[hd.PlanePositionSequence], np.ndarray]:
    """The plane position of every source image (or frame of one multi-frame image), as items and LPS mm."""
    try:
        if len(headers) == 1 and int(headers[0].get("NumberOfFrames", 1) or 1) > 1:
            planes = get_plane_positions_of_image(headers[0])
        else:
            planes = get_plane_positions_of_series(headers)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise ExportError(f"the source DICOM headers lack the plane geometry a SEG needs ({exc.__class__.__name__})"
                          ) from None
    return list(planes), np.array([[float(v) for v in p[0].ImagePositionPatient] for p in planes])


def _orientation(ds: Dataset) -> np.ndarray | None:
    """ImageOrientationPatient (row cosine, column cosine) of a single- or multi-frame image."""
    value = ds.get("ImageOrientationPatient")
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if value is None and ds.get(group):
            planes = ds.get(group)[0].get("PlaneOrientationSequence")
            value = planes[0].get("ImageOrientationPatient") if planes else None
    return None if value is None else np.array([float(v) for v in value])


def _check_in_plane(lps: np.ndarray, headers: list[Dataset]) -> None:
    """The study's rows and columns run along the source's (no flip or transpose since loading)."""
    cosines = _orientation(headers[0])
    if cosines is None:
        raise ExportError("the source DICOM headers have no ImageOrientationPatient")
    along_row, down_col = (lps[:3, axis] / np.linalg.norm(lps[:3, axis]) for axis in (2, 1))
    if not (np.allclose(along_row, cosines[:3], atol=1e-3) and np.allclose(down_col, cosines[3:], atol=1e-3)):
        raise ExportError("the study's rows and columns are not oriented as the source images; load the study again")


def _is_projection(study: Study) -> bool:
    """One 2D image with no patient position (an X-ray, a photo): its SEG frame is simply the image's."""
    first = study.dicom_headers[0]
    return (study.shape[0] == 1 and len(study.dicom_headers) == 1 and "ImagePositionPatient" not in first
            and "PerFrameFunctionalGroupsSequence" not in first)


def _matched_planes(study: Study) -> list[hd.PlanePositionSequence] | None:
    """The source plane at each study slice, found by position (so the frames reference the right images)."""
    if _is_projection(study):
        return None
    planes, positions = _source_positions(study.dicom_headers)
    affine = study.geometry.affine_array()
    if affine is None:
        raise ExportError("the study has no affine; a DICOM SEG of a volume needs the source geometry")
    lps = _RAS_TO_LPS @ affine
    _check_in_plane(lps, study.dicom_headers)
    count = study.shape[0]
    wanted = (lps @ np.stack([np.arange(count), np.zeros(count), np.zeros(count), np.ones(count)]))[:3].T
    distances = np.linalg.norm(wanted[:, None, :] - positions[None], axis=2)
    nearest = distances.argmin(axis=1)
    tolerance = max(0.01, 0.25 * float(np.linalg.norm(lps[:3, 0])))
    if len(set(nearest.tolist())) != count or np.any(distances[np.arange(count), nearest] > tolerance):
        raise ExportError("the study's DICOM headers do not match its slices (positions differ); "
                          "load the study again")
    return [planes[i] for i in nearest]


def _check_study(masks: Mapping[str, np.ndarray], study: Study) -> np.ndarray:
    """The masks stacked (S, H, W, segments) uint8 0/1, after checking the study can carry them."""
    if study.kind != "dicom" or not study.dicom_headers:
        raise ExportError("a DICOM SEG needs DICOM input: this study has no DICOM headers "
                          "(export a NIfTI mask instead)")
    if not masks:
        raise ExportError("no mask to export")
    first = study.dicom_headers[0]
    rows, cols = int(first.Rows), int(first.Columns)
    if study.shape[1:] != (rows, cols):
        raise ExportError(f"the study's slices ({study.shape[1]}x{study.shape[2]}) are not the source "
                          f"images' size ({rows}x{cols})")
    stacked = []
    for concept, mask in masks.items():
        labels = _as_labels(mask, f"mask {concept[:64]!r}")
        if labels.shape != study.shape:
            raise ExportError(f"mask {concept[:64]!r} is {labels.shape}, the study is {study.shape}")
        stacked.append(labels > 0)
    return np.stack(stacked, axis=-1).astype(np.uint8)


def save_dicom_seg(masks: Mapping[str, np.ndarray], study: Study, path: str | Path, *,
                   algorithm: str = "MedSAM3 Agent") -> Path:
    """Write the masks (concept -> (slices, rows, cols)) as one BINARY DICOM SEG of the study's source series.

    One segment per concept, in the mapping's order (segment 1 first), labelled with the concept and
    coded with SNOMED CT where the concept is known (``concept_codes``). Every frame references the
    source image (or frame, for a multi-frame source) at its position (a projection X-ray without a
    patient position: its one image, pixel for pixel); frames with no mask pixel are
    left out, and a study with no pixel in any mask keeps all its (empty) frames, so "nothing found"
    is still a valid SEG.

    Patient data: DICOM requires a SEG to carry the source's patient and study modules (name, ID,
    birth date, sex, study UID, accession number...), copied from ``study.dicom_headers``. This file
    is the one output of the agent that holds patient tags; treat it like the source images.
    Raises ``ExportError`` when the study has no DICOM headers or the masks do not fit it.
    """
    pixels = _check_study(masks, study)
    planes = _matched_planes(study)
    algorithm = _label(algorithm, 0) if algorithm.strip() else "MedSAM3 Agent"
    version = _version()
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm[:64], version=version[:64], family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, concept in enumerate(masks, start=1):
        category, kind = concept_codes(concept)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=_label(concept, number), segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification))
    source_number = study.dicom_headers[0].get("SeriesNumber")
    try:
        seg = hd.seg.Segmentation(
            source_images=study.dicom_headers, pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
            series_instance_uid=hd.UID(), series_number=int(source_number or 0) + 1000,
            sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer=PACKAGE, manufacturer_model_name=algorithm[:64], software_versions=version[:64],
            device_serial_number="0", plane_positions=planes, omit_empty_frames=bool(pixels.any()),
            series_description=f"{algorithm} segmentation"[:64], content_label="MEDSAM3",
            content_description=f"Automatic segmentation by {algorithm}"[:64])
    except (ValueError, TypeError, AttributeError) as exc:  # its message may quote header values: not repeated
        raise ExportError("the source DICOM headers lack what a DICOM SEG requires (e.g. a frame of reference; "
                          f"highdicom: {exc.__class__.__name__})") from None
    path = Path(path)
    seg.save_as(str(path))
    return path
