"""What the user takes away from a turn: the masks in a zip, and result.json.

``AgentResult.save`` writes the files (overlay.png, mask PNGs, result.json and, for DICOM or NIfTI
input, a volume or one slice, a NIfTI per concept at the source affine and, for DICOM, a DICOM SEG);
this only packs them, so the UI's download and the CLI's ``--out`` folder hold the same things. The
names are neutral (``masks.zip``, ``result.json``): an upload's file name often names the patient.
The SEG, by its standard, carries the source's patient module (docs/security.md).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel

MASK_SUFFIXES = (".png", ".nii.gz", ".dcm")  # mask PNGs; NIfTI per concept; the DICOM SEG


class Downloads(BaseModel):
    folder: Path
    masks_zip: Path
    result_json: Path

    def files(self) -> list[str]:
        return [str(self.masks_zip), str(self.result_json)]


def write_downloads(result: Any, folder: Path) -> Downloads:
    """Save ``result`` under ``folder/result`` and zip its masks (PNG; NIfTI, and a DICOM SEG, for DICOM/NIfTI
    input) with result.json, whose paths they are."""
    out = folder / "result"
    out.mkdir(parents=True, exist_ok=True)
    result.save(out)
    result_json = out / "result.json"
    if not result_json.exists():
        raise RuntimeError(f"AgentResult.save wrote no result.json in {out}")
    masks = sorted(p for p in out.rglob("*") if p.is_file() and p.name.endswith(MASK_SUFFIXES)
                   and p.name != "overlay.png")
    masks_zip = folder / "masks.zip"
    with zipfile.ZipFile(masks_zip, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in masks:
            archive.write(path, path.relative_to(out).as_posix())
        archive.write(result_json, "result.json")
    return Downloads(folder=out, masks_zip=masks_zip, result_json=result_json)
