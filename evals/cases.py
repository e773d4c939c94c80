"""One evaluation case: an image, what to find in it (a concept or a question) and how to read its target.

Targets are described, not held: a case says where its mask comes from (mask PNGs, a
ReasonSeg JSON, COCO annotations) and ``load_target`` reads it when the case is scored.
That keeps cases small and picklable, so worker processes can take them.
"""

from __future__ import annotations

import json
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from segmenter.image_io import ImageError
from segmenter.nifti_io import read_nifti
from segmenter.study import Study
from segmenter.study_io import MAX_VOXELS, load_image

Source = Literal["manifest", "reasoning", "reasonseg", "coco", "volume", "measure"]
Measure = Literal["cdr", "ctr"]
MEASURE_NAMES: dict[str, str] = {"cdr": "cup-to-disc ratio", "ctr": "cardiothoracic ratio"}


class Target(BaseModel):
    """The ground truth of one case: the target mask and the pixels the metric leaves out."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    mask: np.ndarray  # bool (H, W)
    ignore: np.ndarray | None = None  # bool (H, W); True = excluded from every metric

    @property
    def empty(self) -> bool:
        keep = self.mask if self.ignore is None else self.mask & ~self.ignore
        return not bool(keep.any())


def read_mask_png(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A binary mask file ({0,255} or {0,1}; any mode) -> bool array, checked against the image size."""
    if not path.is_file():
        raise FileNotFoundError(f"mask file {path} not found")
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("L"))
    except OSError as exc:
        raise ValueError(f"{path}: not a readable mask image ({exc})") from exc
    if array.shape != shape:
        raise ValueError(f"{path}: mask is {array.shape[1]}x{array.shape[0]}, image is {shape[1]}x{shape[0]}")
    # {0,1} masks would vanish at a >127 threshold; anything above the minimum of a two-level mask is foreground
    return array > (127 if array.max() > 1 else 0)


class MaskFiles(BaseModel):
    """Target = union of these mask files; no files = nothing there."""

    kind: Literal["mask_files"] = "mask_files"
    paths: dict[str, Path] = Field(default_factory=dict)

    def load(self, shape: tuple[int, int]) -> Target:
        mask = np.zeros(shape, dtype=bool)
        for path in self.paths.values():
            mask |= read_mask_png(path, shape)
        return Target(mask=mask)


def _polygon(points: Any, where: str) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2 or len(array) < 3:
        raise ValueError(f"{where}: a polygon needs at least 3 [x, y] points, got shape {array.shape}")
    return np.round(array).astype(np.int32)


class ReasonSegPolygons(BaseModel):
    """A LISA ReasonSeg JSON: ``shapes`` polygons; labels containing "ignore" are left out of the metric.

    Drawn the way LISA's ``get_mask_from_json`` does it (outline + fill, largest polygon
    first, so a smaller polygon drawn later wins where they overlap; "flag" shapes skipped).
    """

    kind: Literal["reasonseg"] = "reasonseg"
    json_path: Path

    def load(self, shape: tuple[int, int]) -> Target:
        import cv2

        data = read_reasonseg_json(self.json_path)
        shapes = []
        for i, item in enumerate(data.get("shapes") or []):
            label = str(item.get("label", ""))
            if label.lower() == "flag":
                continue
            poly = _polygon(item.get("points"), f"{self.json_path} shape {i}")
            area_mask = np.zeros(shape, dtype=np.uint8)
            cv2.polylines(area_mask, [poly], True, 1, 1)
            cv2.fillPoly(area_mask, [poly], 1)
            shapes.append((int(area_mask.sum()), label, poly))
        label_map = np.zeros(shape, dtype=np.uint8)
        for _, label, poly in sorted(shapes, key=lambda s: -s[0]):
            value = 255 if "ignore" in label.lower() else 1
            cv2.polylines(label_map, [poly], True, value, 1)
            cv2.fillPoly(label_map, [poly], value)
        return Target(mask=label_map == 1, ignore=label_map == 255)


def _stamp(path: Path) -> tuple[int, int]:
    """(mtime, size): part of the cache keys below, so a file rewritten in place is read again."""
    stat = Path(path).stat()
    return stat.st_mtime_ns, stat.st_size


def read_reasonseg_json(path: Path) -> dict:
    return _read_reasonseg_json(Path(path), *_stamp(path))


@lru_cache(maxsize=4096)
def _read_reasonseg_json(path: Path, _mtime: int, _size: int) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        text = path.read_text(encoding="cp1252")  # some ReasonSeg files are not UTF-8 (LISA reads them so too)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or "shapes" not in data or "text" not in data:
        raise ValueError(f"{path}: a ReasonSeg annotation needs 'text' and 'shapes'")
    return data


def coco_index(path: Path):
    """pycocotools' index of one annotation file, built once per process (per version of the file)."""
    return _coco_index(Path(path), *_stamp(path))


@lru_cache(maxsize=8)
def _coco_index(path: Path, _mtime: int, _size: int):
    import contextlib
    import io

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress lines
        return COCO(str(path))


class CocoAnnotations(BaseModel):
    """Target = union of one category's annotations on one image; ``iscrowd`` regions are ignored."""

    kind: Literal["coco"] = "coco"
    annotation_file: Path
    image_id: int
    category_id: int

    def load(self, shape: tuple[int, int]) -> Target:
        coco = coco_index(self.annotation_file)
        info = coco.imgs[self.image_id]
        if (info["height"], info["width"]) != shape:
            raise ValueError(
                f"{self.annotation_file}: image {self.image_id} is annotated as {info['width']}x{info['height']}, "
                f"but the file is {shape[1]}x{shape[0]}"
            )
        mask = np.zeros(shape, dtype=bool)
        ignore = np.zeros(shape, dtype=bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[self.image_id], catIds=[self.category_id], iscrowd=None)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools' numpy-2 copy= notice
                region = coco.annToMask(ann).astype(bool)
            if ann.get("iscrowd", 0):
                ignore |= region  # crowd regions are neither hits nor misses, as in COCO's own evaluation
            else:
                mask |= region
        return Target(mask=mask, ignore=ignore & ~mask if ignore.any() else None)


class VolumeLabels(BaseModel):
    """Target of a volume case: the union of NIfTI label volumes, read on the study's (slice, row, col) grid."""

    kind: Literal["volume_labels"] = "volume_labels"
    paths: dict[str, Path] = Field(default_factory=dict)

    def load_volume(self, study: Study) -> np.ndarray:
        """(S, H, W) bool; a label whose shape or affine differs from the volume's is refused, naming the file."""
        mask = np.zeros(study.shape, dtype=bool)
        for path in self.paths.values():
            mask |= read_label_volume(path, study)
        return mask

    def load(self, shape: tuple[int, int]) -> Target:
        raise ValueError("a volume case's target is a label volume: it is read with the study (load_volume)")


def read_label_volume(path: Path, study: Study) -> np.ndarray:
    """A NIfTI label (any non-zero voxel inside) in the study's voxel order, checked against its grid."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"label file {path} not found")
    values, geometry = read_nifti(Path(path), str(path), MAX_VOXELS)  # the same reorientation as the volume's
    if values.shape != study.shape:
        raise ValueError(f"{path}: label is {values.shape} (slice, row, col), the volume is {study.shape}")
    ours, theirs = study.geometry.affine_array(), geometry.affine_array()
    if ours is not None and theirs is not None and not np.allclose(ours, theirs, atol=1e-3):
        raise ValueError(f"{path}: label affine differs from the volume's (not on the same voxel grid)")
    return values > 0


TargetSpec = Annotated[MaskFiles | ReasonSegPolygons | CocoAnnotations | VolumeLabels, Field(discriminator="kind")]


class EvalCase(BaseModel):
    """One thing to score: an image, the concepts its target is made of, and (for reasoning sets) a question."""

    key: str  # unique within a run; results.jsonl is keyed on (mode, key)
    id: str
    dataset: str
    source: Source
    image: Path
    concepts: list[str] = Field(default_factory=list)
    question: str | None = None
    split: str | None = None
    target: TargetSpec
    metadata: dict[str, Any] = Field(default_factory=dict)
    measure: Measure | None = None  # a measurement case (CDR, CTR): scored by its error, not by a mask

    @field_validator("image")
    @classmethod
    def _absolute(cls, image: Path) -> Path:
        # one spelling per file: cases from different sets on the same image share one load and encode
        return Path(image).resolve()

    @property
    def kind(self) -> Literal["concept", "question"]:
        return "question" if self.question is not None else "concept"

    @property
    def is_volume(self) -> bool:
        return self.source == "volume"

    @property
    def concept_label(self) -> str:
        """The ``concept`` column of the summary: the concept(s), the measurement's name, or "none" (a question
        with no target concept)."""
        if self.measure is not None:
            return MEASURE_NAMES[self.measure]
        return "+".join(self.concepts) if self.concepts else "none"

    def load_image(self) -> np.ndarray:
        try:
            return load_image(self.image)
        except ImageError as exc:
            raise ImageError(f"case {self.key}: {exc}") from exc

    def load_target(self, shape: tuple[int, int]) -> Target:
        return self.target.load(shape)
