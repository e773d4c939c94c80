"""What the user takes away from a turn: the masks as PNGs in a zip, and result.json.

``AgentResult.save`` writes the files (overlay.png, mask PNGs, result.json); this only packs
them, so the UI's download and the CLI's ``--out`` folder hold the same things. The names are
neutral (``masks.zip``, ``result.json``): an upload's file name often names the patient.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel


class Downloads(BaseModel):
    folder: Path
    masks_zip: Path
    result_json: Path

    def files(self) -> list[str]:
        return [str(self.masks_zip), str(self.result_json)]


def write_downloads(result: Any, folder: Path) -> Downloads:
    """Save ``result`` under ``folder/result`` and zip its mask PNGs (with result.json, whose paths they are)."""
    out = folder / "result"
    out.mkdir(parents=True, exist_ok=True)
    result.save(out)
    result_json = out / "result.json"
    if not result_json.exists():
        raise RuntimeError(f"AgentResult.save wrote no result.json in {out}")
    masks = sorted(p for p in out.rglob("*.png") if p.name != "overlay.png")
    masks_zip = folder / "masks.zip"
    with zipfile.ZipFile(masks_zip, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in masks:
            archive.write(path, path.relative_to(out).as_posix())
        archive.write(result_json, "result.json")
    return Downloads(folder=out, masks_zip=masks_zip, result_json=result_json)
