"""Dataset loaders: each turns one on-disk format into a list of ``EvalCase``.

1. ``load_manifest`` — ``<dataset>/manifest.jsonl`` (``../shared/data``): one case per (image, concept), plus
   one measurement case (CDR, CTR: ``evals.measures``) per image holding the masks it needs; a manifest of
   volumes (``volume`` instead of ``image``: NIfTI volume + NIfTI labels) gives one case per (volume, concept).
2. ``load_reasoning_set`` — a JSONL of questions: ``id``, ``image``, ``question``, ``masks``
   ({concept: path}; the target is their union; ``{}`` = nothing there), optional ``concepts``,
   ``dataset`` and ``split``. Paths are relative to the JSONL file.
3. ``load_reasonseg`` — LISA ReasonSeg folders: ``<name>.jpg`` + ``<name>.json`` (``text``, ``shapes``).
4. ``load_coco`` — COCO instance annotations: one case per (image, category with annotations).

``load_path`` looks at a path and picks the loader. Every loader raises ``ValueError`` naming
the file and line when the input is malformed, rather than skipping it silently.

Malformed rows raise ``ValueError`` even for a wrong JSON type (ruff's TRY004 is silenced on
those lines): the CLI reports ValueErrors as one-line user errors, which a bad data file is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from evals.cases import (
    CocoAnnotations,
    EvalCase,
    MaskFiles,
    ReasonSegPolygons,
    VolumeLabels,
    coco_index,
    read_reasonseg_json,
)
from evals.measures import measure_cases

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")  # noqa: TRY004
        rows.append((number, row))
    return rows


def _require(row: dict, field: str, kind: type | tuple[type, ...], where: str) -> Any:
    if field not in row:
        raise ValueError(f"{where}: missing field {field!r}")
    value = row[field]
    if not isinstance(value, kind):
        raise ValueError(f"{where}: field {field!r} should be {getattr(kind, '__name__', kind)}, got {value!r}")  # noqa: TRY004
    return value


def _check_unique(cases: list[EvalCase]) -> list[EvalCase]:
    seen: set[str] = set()
    for case in cases:
        if case.key in seen:
            raise ValueError(f"duplicate case {case.key!r}: ids must be unique within a dataset")
        seen.add(case.key)
    return cases


def _keep(value: str | None, allowed: Iterable[str] | None) -> bool:
    return allowed is None or value in set(allowed)


# --- 1. manifests ---------------------------------------------------------------------------------


def load_manifest(
    manifest: Path,
    *,
    split: str | None = "val",
    concepts: Iterable[str] | None = None,
    dataset: str | None = None,
) -> list[EvalCase]:
    """One case per (row, concept) of a ``manifest.jsonl`` and its measurement cases (see the module doc);
    the dataset name is its folder's name."""
    manifest = Path(manifest)
    root = manifest.parent
    dataset = dataset or root.name
    kept = None if concepts is None else set(concepts)
    cases = []
    for number, row in _read_jsonl(manifest):
        where = f"{manifest}:{number}"
        if split is not None and row.get("split") != split:
            continue
        volume = "volume" in row and "image" not in row
        row_id = str(_require(row, "id", (str, int), where))
        image = root / _require(row, "volume" if volume else "image", str, where)
        masks = _mask_paths(_require(row, "masks", dict, where), root, where)
        meta = {k: v for k, v in row.items() if k not in ("id", "image", "volume", "masks", "split")}
        row_cases = [
            EvalCase(
                key=f"{'volume' if volume else 'manifest'}:{dataset}/{row_id}#{concept}",
                id=row_id,
                dataset=dataset,
                source="volume" if volume else "manifest",
                image=image,
                concepts=[concept],
                split=row.get("split"),
                target=VolumeLabels(paths={concept: path}) if volume else MaskFiles(paths={concept: path}),
                metadata=meta,
            )
            for concept, path in masks.items() if _keep(concept, kept)
        ]
        cases.extend(row_cases)
        if row_cases and not volume:
            cases.extend(measure_cases(row_cases[0], masks, kept))
    return _check_unique(cases)


def _mask_paths(masks: dict, root: Path, where: str) -> dict[str, Path]:
    for concept, mask_path in masks.items():
        if not isinstance(mask_path, str):
            raise ValueError(f"{where}: mask path for {concept!r} should be a string, got {mask_path!r}")  # noqa: TRY004
    return {concept: root / mask_path for concept, mask_path in masks.items()}


def find_manifests(root: Path) -> list[Path]:
    """``root/manifest.jsonl`` or ``root/*/manifest.jsonl``, sorted by dataset name."""
    root = Path(root)
    if (root / "manifest.jsonl").is_file():
        return [root / "manifest.jsonl"]
    return sorted(root.glob("*/manifest.jsonl"))


# --- 2. reasoning sets ----------------------------------------------------------------------------


def _resolve(path_text: str, bases: list[Path]) -> Path:
    """A path relative to the first base where it exists (the JSONL's folder first); else to that folder."""
    path = Path(path_text)
    if path.is_absolute():
        return path
    for base in bases:
        if (base / path).exists():
            return base / path
    return bases[0] / path


def load_reasoning_set(
    path: Path,
    *,
    split: str | None = None,
    datasets: Iterable[str] | None = None,
    fallback_roots: Iterable[Path] = (),
) -> list[EvalCase]:
    """Question cases from a reasoning-set JSONL.

    Relative paths resolve against the JSONL's folder; where a file is not found there, each
    of ``fallback_roots`` (e.g. the ``--data`` folder) is tried, so a set can also name images
    as ``kvasir_seg/images/x.jpg``. A row's ``split`` (if it has one) is filtered on ``split``.
    """
    path = Path(path)
    bases = [path.parent, *[Path(r) for r in fallback_roots]]
    default_dataset = path.stem
    cases = []
    for number, row in _read_jsonl(path):
        where = f"{path}:{number}"
        row_id = str(_require(row, "id", (str, int), where))
        question = _require(row, "question", str, where).strip()
        if not question:
            raise ValueError(f"{where}: question is empty")
        image = _resolve(_require(row, "image", str, where), bases)
        masks = _require(row, "masks", dict, where)
        for concept, mask_path in masks.items():
            if not isinstance(mask_path, str):
                raise ValueError(f"{where}: mask path for {concept!r} should be a string, got {mask_path!r}")  # noqa: TRY004
        concepts = row.get("concepts", list(masks))
        if not isinstance(concepts, list) or not all(isinstance(c, str) for c in concepts):
            raise ValueError(f"{where}: 'concepts' should be a list of strings, got {concepts!r}")
        dataset = row.get("dataset") or default_dataset
        if not _keep(dataset, datasets):
            continue
        if split is not None and "split" in row and row["split"] != split:
            continue
        meta = {k: v for k, v in row.items() if k not in ("id", "image", "question", "masks", "concepts", "dataset")}
        cases.append(
            EvalCase(
                key=f"reasoning:{default_dataset}/{row_id}",
                id=row_id,
                dataset=dataset,
                source="reasoning",
                image=image,
                concepts=list(concepts),
                question=question,
                split=row.get("split"),
                target=MaskFiles(paths={c: _resolve(p, bases) for c, p in masks.items()}),
                metadata=meta,
            )
        )
    return _check_unique(cases)


# --- 3. LISA ReasonSeg folders --------------------------------------------------------------------


def is_reasonseg_folder(folder: Path) -> bool:
    for json_path in sorted(Path(folder).glob("*.json"))[:3]:
        try:
            read_reasonseg_json(json_path)
            return True
        except ValueError:
            return False
    return False


def load_reasonseg(folder: Path, *, dataset: str | None = None, all_texts: bool = False) -> list[EvalCase]:
    """One case per image of a ReasonSeg folder (``all_texts``: one per text entry instead).

    As in LISA's evaluation, the first ``text`` is the query; a short phrase
    (``is_sentence`` false) becomes "What is <phrase> in this image?" and is also the
    case's concept, so ``direct`` mode can prompt it; sentences have no concept.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    dataset = dataset or f"reasonseg_{folder.name}"
    cases = []
    for json_path in sorted(folder.glob("*.json")):
        data = read_reasonseg_json(json_path)
        image = next((json_path.with_suffix(s) for s in IMAGE_SUFFIXES if json_path.with_suffix(s).is_file()), None)
        if image is None:
            raise FileNotFoundError(f"{json_path}: no image beside it ({json_path.stem}.jpg/.png)")
        texts = data["text"] if isinstance(data["text"], list) else [data["text"]]
        texts = [t.strip() for t in texts if isinstance(t, str) and t.strip()]
        if not texts:
            raise ValueError(f"{json_path}: 'text' holds no query")
        is_sentence = bool(data.get("is_sentence", True))
        for index, text in enumerate(texts if all_texts else texts[:1]):
            question = text if is_sentence else f"What is {text} in this image?"
            suffix = f"#{index}" if all_texts else ""
            cases.append(
                EvalCase(
                    key=f"reasonseg:{dataset}/{json_path.stem}{suffix}",
                    id=json_path.stem + suffix,
                    dataset=dataset,
                    source="reasonseg",
                    image=image,
                    concepts=[] if is_sentence else [text],
                    question=question,
                    target=ReasonSegPolygons(json_path=json_path),
                    metadata={"is_sentence": is_sentence, "text": text},
                )
            )
    if not cases:
        raise ValueError(f"{folder}: no ReasonSeg annotations (<name>.json beside <name>.jpg) found")
    return _check_unique(cases)


# --- 4. COCO instance annotations -----------------------------------------------------------------


def load_coco(
    annotation_file: Path,
    *,
    image_root: Path | None = None,
    dataset: str | None = None,
    concepts: Iterable[str] | None = None,
) -> list[EvalCase]:
    """One case per (image, category) that has at least one annotation; the concept is the category name.

    Image ``file_name``s resolve against ``image_root`` (default: the annotation file's folder,
    then its ``images/`` subfolder).
    """
    annotation_file = Path(annotation_file)
    if not annotation_file.is_file():
        raise FileNotFoundError(f"{annotation_file}: no such file")
    try:
        coco = coco_index(annotation_file)
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{annotation_file}: not a COCO instance-annotation file ({exc!r})") from exc
    dataset = dataset or annotation_file.stem
    roots = [Path(image_root)] if image_root else [annotation_file.parent, annotation_file.parent / "images"]
    cases = []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        image = _resolve(info["file_name"], roots)
        cat_ids = sorted({a["category_id"] for a in coco.imgToAnns.get(image_id, [])})
        for cat_id in cat_ids:
            if cat_id not in coco.cats:
                raise ValueError(f"{annotation_file}: image {image_id} has an annotation of unknown category {cat_id}")
            name = coco.cats[cat_id]["name"]
            if not _keep(name, concepts):
                continue
            cases.append(
                EvalCase(
                    key=f"coco:{dataset}/{image_id}#{name}",
                    id=str(image_id),
                    dataset=dataset,
                    source="coco",
                    image=image,
                    concepts=[name],
                    target=CocoAnnotations(annotation_file=annotation_file, image_id=image_id, category_id=cat_id),
                    metadata={"file_name": info["file_name"]},
                )
            )
    return _check_unique(cases)


def is_coco_file(path: Path) -> bool:
    if Path(path).suffix.lower() != ".json":
        return False
    try:
        head = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(head, dict) and {"images", "annotations", "categories"} <= set(head)


# --- picking a loader -----------------------------------------------------------------------------


def load_path(
    path: Path,
    *,
    split: str | None = "val",
    datasets: Iterable[str] | None = None,
    concepts: Iterable[str] | None = None,
    image_root: Path | None = None,
) -> list[EvalCase]:
    """Cases from whatever ``path`` is: a data root of manifests, one manifest (or its folder),
    a reasoning-set JSONL, a ReasonSeg folder or a COCO annotation file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    datasets = list(datasets) if datasets is not None else None
    if path.is_file() and path.suffix == ".jsonl":
        rows = _read_jsonl(path)
        if rows and "question" in rows[0][1]:
            return load_reasoning_set(path, split=split, datasets=datasets)
        if datasets is not None and path.parent.name not in datasets:
            return []
        return load_manifest(path, split=split, concepts=concepts)
    if path.is_file() and is_coco_file(path):
        cases = load_coco(path, image_root=image_root, concepts=concepts)
        return [c for c in cases if _keep(c.dataset, datasets)]
    if path.is_dir():
        manifests = find_manifests(path)
        if manifests:
            cases = []
            for manifest in manifests:
                if not _keep(manifest.parent.name, datasets):
                    continue
                cases.extend(load_manifest(manifest, split=split, concepts=concepts))
            return cases
        if is_reasonseg_folder(path):
            cases = load_reasonseg(path)
            return [c for c in cases if _keep(c.dataset, datasets)]
    raise ValueError(
        f"{path}: not a dataset this benchmark reads. Expected a folder of <dataset>/manifest.jsonl, a manifest.jsonl, "
        "a reasoning-set .jsonl (id, image, question, masks), a ReasonSeg folder (<name>.jpg + <name>.json) "
        "or a COCO instance-annotation .json"
    )
