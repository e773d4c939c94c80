"""`medsam3-agent segment VOLUME "concept"`: one concept over a DICOM series / zip / NIfTI volume.

The volume branch of ``segmenter/cli.py``: the slices are segmented with ``segment_volume``, and
the output folder gets the mask as NIfTI at the source affine (``mask.nii.gz``), a DICOM SEG for
DICOM input (``segmentation.dcm``), the key slice's overlay (``overlay.png``) and ``result.json``
(per-slice presence, components, voxels and mL where the voxel size is known; no DICOM tag).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

from segmenter.facade import Segmenter
from segmenter.overlay import render_overlay
from segmenter.study import Study
from segmenter.volume import ConceptVolume, segment_volume


def read_study(path: str, args: argparse.Namespace) -> Study | None:
    """The study a DICOM/NIfTI input (file, series folder, zip) is, or None for a photo (the 2D path reads it)."""
    from segmenter.study_io import load_study, sniff

    source = Path(path)
    if source.is_file():
        with source.open("rb") as stream:
            if sniff(stream.read(544), source.name) == "image":
                if args.window or args.slices or args.slice_axis is not None:
                    raise ValueError("--window, --slices and --slice-axis apply to DICOM and NIfTI inputs")
                return None
    return load_study(source, window=args.window, slice_axis=args.slice_axis)


def _progress(done: int, total: int) -> None:
    print(f"\rslices {done}/{total} [{'#' * (20 * done // total):<20}]", end="\n" if done == total else "",
          file=sys.stderr, flush=True)


def _summary(found: ConceptVolume, study: Study, slices: range, key: int) -> dict:
    voxels = int(found.mask.sum())
    per_voxel = study.geometry.voxel_volume_ml
    return {
        "concept": found.concept,
        "shape": list(study.shape),
        "slices": [slices.start, slices.stop],
        "key_slice": key,
        "voxels": voxels,
        "volume_ml": None if per_voxel is None else round(voxels * per_voxel, 3),
        "components": [{"label": c.label, "voxels": c.voxels, "bbox": list(c.bbox), "score": round(c.score, 4)}
                       for c in found.components],
        "dropped_islands": found.dropped_islands,
        "presence": [None if p is None else round(p, 4) for p in found.presence[slices.start:slices.stop]],
    }


def segment_study(seg: Segmenter, study: Study, args: argparse.Namespace) -> int:
    """Segment ``args.concept`` over ``study``'s slices and write the files; 0 when done."""
    from segmenter.export import save_dicom_seg, save_nifti

    if args.box or args.point or not args.concept:
        raise ValueError("a volume takes a concept phrase (boxes and points are per image)")
    result = segment_volume(seg, study, args.concept, slices=args.slices, progress=_progress)
    found = result.concepts[args.concept]
    key = found.key_slice()
    key = result.slices[len(result.slices) // 2] if key is None else key
    args.out.mkdir(parents=True, exist_ok=True)
    save_nifti(found.mask, study.geometry, args.out / "mask.nii.gz")
    files = ["mask.nii.gz"]
    if study.kind == "dicom" and study.dicom_headers:
        save_dicom_seg({args.concept: found.mask}, study, args.out / "segmentation.dcm")
        files.append("segmentation.dcm")
    overlay = render_overlay(study.slices[key], [found.component_mask(c.label)[key] for c in found.components])
    Image.fromarray(overlay).save(args.out / "overlay.png")
    summary = {**_summary(found, study, result.slices, key), "files": files, "seconds": round(result.seconds, 1)}
    (args.out / "result.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    size = f"{summary['volume_ml']} mL" if summary["volume_ml"] is not None else f"{summary['voxels']} voxels"
    found_text = f"{len(found.components)} component(s), {size}, key slice {key}" if found.found else "nothing found"
    best = max((p for p in found.presence if p is not None), default=0.0)
    first, last = result.slices.start, result.slices.stop - 1
    where = f"slice {first}" if first == last else f"slices {first}-{last}"
    print(f"{args.concept!r} on {where}: {found_text}, "
          f"highest presence {best:.2f} -> {args.out}")
    return 0

