"""A volume run's 3D output: the masks per concept over the study, and their files (NIfTI, DICOM SEG).

``AgentResult.volume`` holds one of these; ``AgentResult.save`` calls ``save`` here. The study is
kept for its geometry (the NIfTI affine) and, for DICOM input, its headers (the SEG references the
source series); neither is serialised: ``summary`` holds shapes, slice indices and counts only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segmenter.study import Study
from segmenter.volume import ConceptVolume

SEG_NAME = "segmentation.dcm"


@dataclass
class VolumeOutput:
    study: Study
    concepts: dict[str, ConceptVolume]  # concept -> its (S, H, W) labels, components, presence per slice
    slices: range  # the slices segmented
    key_slice: int  # the slice shown in the overlay (largest extent of the found masks)
    paths: dict[str, str] = field(default_factory=dict)  # concept (or "seg") -> file, once saved

    def masks(self) -> dict[str, np.ndarray]:
        """Concept -> (S, H, W) bool mask over the whole study."""
        return {c: v.mask for c, v in self.concepts.items()}

    def save(self, out: Path, name_for: Callable[[str], str]) -> dict[str, str]:
        """Write masks/<name>.nii.gz per concept (the source affine) and, for DICOM input, a DICOM SEG of
        all concepts; return (and keep, for ``summary``) concept (or "seg") -> path relative to ``out``."""
        from segmenter.export import save_dicom_seg, save_nifti

        (out / "masks").mkdir(parents=True, exist_ok=True)
        paths: dict[str, str] = {}
        for concept, volume in self.concepts.items():
            paths[concept] = f"masks/{name_for(concept)}.nii.gz"
            save_nifti(volume.mask, self.study.geometry, out / paths[concept])
        if self.study.kind == "dicom" and self.study.dicom_headers:
            save_dicom_seg(self.masks(), self.study, out / SEG_NAME)
            paths["seg"] = SEG_NAME
        self.paths = paths
        return paths

    def summary(self) -> dict[str, Any]:
        """JSON-ready: shape, slices, key slice and per concept its file, components and presence per slice."""
        paths = self.paths
        return {
            "shape": list(self.study.shape),
            "slices": [self.slices.start, self.slices.stop],
            "key_slice": self.key_slice,
            "seg": paths.get("seg"),
            "concepts": [
                {
                    "concept": concept,
                    "nifti": paths.get(concept),
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
