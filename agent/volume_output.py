"""A study's masks as files (a NIfTI per concept, a DICOM SEG for DICOM input), and a volume run's 3D output.

``save_study_masks`` writes them for any DICOM or NIfTI input, a volume or one slice.
``AgentResult.volume`` holds a ``VolumeOutput``; ``AgentResult.save`` calls its ``save`` (a volume) or
``save_study_masks`` with the answer's masks (a one-slice DICOM or NIfTI, ``AgentResult.source``). The
study is kept for its geometry (the NIfTI affine) and, for DICOM input, its headers (the SEG references
the source series); neither is serialised: ``summary`` holds shapes, slice indices and counts only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segmenter.study import Study
from segmenter.volume import ConceptVolume

SEG_NAME = "segmentation.dcm"
NIFTI_SUFFIX = "_3d.nii.gz"  # masks/<concept>_3d.nii.gz: beside masks/<concept>.png, for a volume or one slice


@dataclass
class StudyFiles:
    """What ``save_study_masks`` wrote, as paths relative to the output folder."""

    nifti: dict[str, str] = field(default_factory=dict)  # concept -> masks/<name>_3d.nii.gz
    seg: str | None = None  # the DICOM SEG (DICOM input only)
    seg_skipped: str | None = None  # why DICOM input got no SEG (headers a SEG cannot reference); the NIfTI stand


def save_study_masks(out: Path, study: Study, masks: Mapping[str, np.ndarray],
                     names: Mapping[str, str]) -> StudyFiles:
    """Write masks/<names[concept]>_3d.nii.gz per concept ((slices, rows, cols) masks, the source affine;
    an empty mask too: nothing found) and, for DICOM input with its headers, one DICOM SEG of all concepts
    (or, where the headers cannot carry one, ``seg_skipped`` says why)."""
    from segmenter.export import ExportError, save_dicom_seg, save_nifti

    files = StudyFiles()
    if not masks:
        return files
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for concept, mask in masks.items():
        files.nifti[concept] = f"masks/{names[concept]}{NIFTI_SUFFIX}"
        save_nifti(mask, study.geometry, out / files.nifti[concept])
    if study.kind == "dicom" and study.dicom_headers:
        try:
            save_dicom_seg(masks, study, out / SEG_NAME)
            files.seg = SEG_NAME
        except ExportError as exc:  # the answer and the NIfTI masks are still worth having
            files.seg_skipped = str(exc)
    return files


@dataclass
class VolumeOutput:
    study: Study
    concepts: dict[str, ConceptVolume]  # concept -> its (S, H, W) labels, components, presence per slice
    slices: range  # the slices segmented
    key_slice: int  # the slice shown in the overlay (largest extent of the found masks)
    files: StudyFiles = field(default_factory=StudyFiles)  # the NIfTI (and SEG) files, once saved

    def masks(self) -> dict[str, np.ndarray]:
        """Concept -> (S, H, W) bool mask over the whole study."""
        return {c: v.mask for c, v in self.concepts.items()}

    def save(self, out: Path, name_for: Callable[[str], str]) -> StudyFiles:
        """Write masks/<name>_3d.nii.gz per concept (the source affine) and, for DICOM input, a DICOM SEG of
        all concepts (``save_study_masks``); return (and keep, for ``summary``) their paths."""
        self.files = save_study_masks(out, self.study, self.masks(), {c: name_for(c) for c in self.concepts})
        return self.files

    def summary(self) -> dict[str, Any]:
        """JSON-ready: shape, slices, key slice and per concept its file, components and presence per slice."""
        files = self.files
        return {
            "shape": list(self.study.shape),
            "slices": [self.slices.start, self.slices.stop],
            "key_slice": self.key_slice,
            "seg": files.seg,
            "concepts": [
                {
                    "concept": concept,
                    "nifti": files.nifti.get(concept),
                    "voxels": int(volume.mask.sum()),
                    "dropped_islands": volume.dropped_islands,
                    "components": [{"label": c.label, "voxels": c.voxels, "bbox": list(c.bbox),
                                    "score": round(c.score, 4)} for c in volume.components],
                    "presence": [None if p is None else round(p, 4) for p in volume.presence[self.slices.start:
                                                                                           self.slices.stop]],
                }
                for concept, volume in self.concepts.items()
            ],
        }
