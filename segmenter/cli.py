"""`medsam3-agent segment IMAGE "polyp" --out DIR`: masks, overlay and JSON for one prompt.

IMAGE may also be a DICOM file, a DICOM series folder or zip, or a NIfTI volume (read by ``load_study``);
a volume is segmented slice by slice with the concept (``segmenter/volume_cli.py``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file (PNG, JPEG, TIFF, DICOM), DICOM series folder or zip, or NIfTI")
    parser.add_argument("concept", nargs="?", default=None, help='concept phrase, e.g. "polyp"')
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1", help="box prompt (repeatable)")
    parser.add_argument("--point", action="append", default=[], metavar="X,Y[,0]", help="point (,0 = background)")
    parser.add_argument("--backend", default="lite", help="lite (default), sam3 or remote")
    parser.add_argument("--weights", default=None, help="MedSAM3-Lite weights (default: the shipped ones)")
    parser.add_argument("--presence-threshold", type=float, default=None,
                        help="lite: drop the concept below this presence (default: the concept's own threshold, "
                             "calibrated for the weights, else 0.5)")
    parser.add_argument("--window", default=None, help="CT/MR window: a preset (lung, abdomen, brain, ...) or C,W")
    parser.add_argument("--slices", default=None, metavar="START:END", help="a volume's slices to segment, e.g. 40:80")
    parser.add_argument("--slice-axis", type=int, choices=[0, 1, 2], default=None,
                        help="a NIfTI volume's voxel axis to slice along (default: the last)")


def _numbers(text: str, n: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--{what} {text!r}: expected comma-separated numbers") from None
    if len(values) not in n:
        raise ValueError(f"--{what} {text!r}: expected {' or '.join(map(str, n))} numbers")
    return values


def save_mask(path: Path, mask: np.ndarray) -> None:
    """A 0/255 single-channel PNG at the image's size."""
    from PIL import Image

    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def main(args: argparse.Namespace) -> int:
    from PIL import Image

    from segmenter import Point, Segmenter
    from segmenter.overlay import render_overlay
    from segmenter.volume_cli import read_study, segment_study

    boxes = [_numbers(b, (4,), "box") for b in args.box]
    points = []
    for p in args.point:
        v = _numbers(p, (2, 3), "point")
        points.append(Point(x=v[0], y=v[1], positive=len(v) == 2 or v[2] != 0))
    if args.concept is None and not boxes and not points:
        raise ValueError("give a concept phrase, --box or --point")
    options = {}
    if args.backend == "lite":
        options = {"weights": args.weights, "presence_threshold": args.presence_threshold}
    study = read_study(args.image, args)  # None: a photo, read by the 2D loader below
    start = time.perf_counter()
    seg = Segmenter(args.backend, **options)
    load_ms = (time.perf_counter() - start) * 1000
    if study is not None and study.is_volume:
        return segment_study(seg, study, args)
    if study is not None and args.slices:
        raise ValueError("--slices applies to a volume; this input is one slice")
    seg.set_image(args.image if study is None else study.slices[0])
    result = seg.segment(concept=args.concept, boxes=boxes, points=points)
    args.out.mkdir(parents=True, exist_ok=True)
    instances = []
    for i, inst in enumerate(result.instances, start=1):
        name = f"mask_{i}.png"
        save_mask(args.out / name, inst.mask)
        instances.append({"path": name, "score": round(inst.score, 4), "box": inst.box.as_list(), "area": inst.area})
    save_mask(args.out / "mask_union.png", result.union_mask)
    Image.fromarray(render_overlay(seg.image, [i.mask for i in result.instances])).save(args.out / "overlay.png")
    summary = {
        "image": str(args.image),
        "concept": args.concept,
        "boxes": boxes,
        "points": [p.model_dump() for p in points],
        "backend": result.backend,
        "presence": round(result.presence, 4),
        "found": result.found,
        "union_mask": "mask_union.png",
        "instances": instances,
        "timings_ms": {"load_model": round(load_ms, 1), **{k: round(v, 1) for k, v in result.timings_ms.items()}},
    }
    (args.out / "result.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    found = f"{len(instances)} instance(s)" if instances else "nothing found"
    print(f"{result.prompt.describe()}: {found}, presence {result.presence:.2f} -> {args.out}")
    return 0
