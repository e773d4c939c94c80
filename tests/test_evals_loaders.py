"""evals.loaders: manifests, reasoning sets, ReasonSeg folders and COCO files made here, scored by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from evals.loaders import load_coco, load_manifest, load_path, load_reasoning_set, load_reasonseg
from evals.metrics import score_case


def write_image(path: Path, shape=(40, 60)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(path)
    return path


def write_mask(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path


def rect(shape, y0, y1, x0, x1) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture
def synthetic_root(tmp_path) -> Path:
    """Two 2D datasets and a volume dataset in the shared-data layout."""
    root = tmp_path / "data"
    rows = []
    for i, split in enumerate(["val", "val", "train"]):
        write_image(root / "lungs" / "images" / f"im{i}.png")
        write_mask(root / "lungs" / "masks" / "left_lung" / f"im{i}.png", rect((40, 60), 5, 30, 5, 25))
        write_mask(root / "lungs" / "masks" / "right_lung" / f"im{i}.png", rect((40, 60), 5, 30, 35, 55))
        rows.append({"id": f"im{i}", "image": f"images/im{i}.png", "split": split, "modality": "x-ray",
                     "masks": {"left lung": f"masks/left_lung/im{i}.png", "right lung": f"masks/right_lung/im{i}.png"}})
    (root / "lungs" / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    write_image(root / "polyps" / "images" / "p0.jpg")
    write_mask(root / "polyps" / "masks" / "polyp" / "p0.png", np.zeros((40, 60), bool))  # nothing there
    (root / "polyps" / "manifest.jsonl").write_text(json.dumps(
        {"id": "p0", "image": "images/p0.jpg", "split": "val", "masks": {"polyp": "masks/polyp/p0.png"}}) + "\n",
        encoding="utf-8")
    (root / "volumes").mkdir()
    (root / "volumes" / "manifest.jsonl").write_text(json.dumps(
        {"id": "v0", "volume": "volumes/v0.nii.gz", "split": "val", "masks": {}}) + "\n", encoding="utf-8")
    return root


def test_manifest_gives_one_case_per_image_and_concept_filtered_by_split(synthetic_root):
    cases = load_manifest(synthetic_root / "lungs" / "manifest.jsonl", split="val")
    assert [(c.id, c.concepts) for c in cases] == [
        ("im0", ["left lung"]), ("im0", ["right lung"]), ("im1", ["left lung"]), ("im1", ["right lung"])]
    assert all(c.dataset == "lungs" and c.source == "manifest" and c.kind == "concept" for c in cases)
    assert cases[0].metadata == {"modality": "x-ray"}
    target = cases[1].load_target((40, 60))
    assert target.mask.sum() == 25 * 20 and target.mask[10, 40] and not target.mask[10, 10]
    assert len(load_manifest(synthetic_root / "lungs" / "manifest.jsonl", split=None)) == 6
    right = load_manifest(synthetic_root / "lungs" / "manifest.jsonl", split="train", concepts=["right lung"])
    assert [(c.id, c.split) for c in right] == [("im2", "train")]


def test_data_root_finds_every_dataset_and_a_volume_manifest_without_labels_adds_nothing(synthetic_root):
    cases = load_path(synthetic_root, split="val")
    assert sorted({c.dataset for c in cases}) == ["lungs", "polyps"]
    empty = next(c for c in cases if c.dataset == "polyps")
    assert empty.load_target((40, 60)).empty
    assert {c.dataset for c in load_path(synthetic_root, split="val", datasets=["polyps"])} == {"polyps"}
    assert len(load_path(synthetic_root / "lungs", split="val")) == 4  # one dataset folder
    assert len(load_path(synthetic_root / "lungs" / "manifest.jsonl", split="val", concepts=["left lung"])) == 2


def test_manifest_errors_name_the_file_and_line(tmp_path, synthetic_root):
    bad = tmp_path / "bad" / "manifest.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"id": "a", "image": "a.png", "split": "val", "masks": {}}\n{not json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"manifest.jsonl:2: not valid JSON"):
        load_manifest(bad)
    bad.write_text('{"id": "a", "split": "val", "masks": {}}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"manifest.jsonl:1: missing field 'image'"):
        load_manifest(bad)
    # a mask of the wrong size is refused when the target is read, naming the mask file
    case = load_manifest(synthetic_root / "lungs" / "manifest.jsonl")[0]
    with pytest.raises(ValueError, match=r"left_lung/im0.png: mask is 60x40, image is 50x40"):
        case.load_target((40, 50))


def test_reasoning_set_targets_are_unions_and_empty_means_nothing_there(tmp_path):
    img = write_image(tmp_path / "imgs" / "a.png")
    write_mask(tmp_path / "imgs" / "left.png", rect((40, 60), 0, 10, 0, 10))
    write_mask(tmp_path / "imgs" / "right.png", rect((40, 60), 0, 10, 50, 60))
    qfile = tmp_path / "sets" / "dev.jsonl"
    qfile.parent.mkdir()
    rows = [
        {"id": "q1", "image": "../imgs/a.png", "question": "Where are the lungs?",
         "masks": {"left lung": "../imgs/left.png", "right lung": "../imgs/right.png"}, "dataset": "lungs"},
        {"id": "q2", "image": "../imgs/a.png", "question": "Is there a polyp?", "masks": {}, "concepts": ["polyp"]},
        {"id": "q3", "image": str(img), "question": "Anything odd?", "masks": {}},
    ]
    qfile.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    cases = load_reasoning_set(qfile)
    assert [c.kind for c in cases] == ["question"] * 3
    assert [c.dataset for c in cases] == ["lungs", "dev", "dev"]  # the file's name where a row names none
    assert [c.concept_label for c in cases] == ["left lung+right lung", "polyp", "none"]
    both = cases[0].load_target((40, 60))
    assert both.mask.sum() == 200 and both.mask[5, 55] and both.mask[5, 5]
    assert cases[1].load_target((40, 60)).empty
    assert cases[0].image == (tmp_path / "imgs" / "a.png").resolve()  # "../imgs/a.png" from the file's folder
    # scoring: the right answer to "nothing there" is an empty mask
    assert score_case(np.zeros((40, 60), bool), cases[1].load_target((40, 60)).mask).iou == 1.0
    assert [c.id for c in load_reasoning_set(qfile, datasets=["lungs"])] == ["q1"]


def test_reasoning_set_falls_back_to_a_data_root_and_reports_bad_rows(tmp_path, synthetic_root):
    qfile = tmp_path / "q.jsonl"
    qfile.write_text(json.dumps({"id": "1", "image": "lungs/images/im0.png", "question": "left lung?",
                                 "masks": {"left lung": "lungs/masks/left_lung/im0.png"}}) + "\n", encoding="utf-8")
    case = load_reasoning_set(qfile, fallback_roots=[synthetic_root])[0]
    assert case.image == (synthetic_root / "lungs/images/im0.png").resolve()
    assert case.load_target((40, 60)).mask.sum() == 25 * 20
    qfile.write_text(json.dumps({"id": "1", "image": "x.png", "masks": {}}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"q.jsonl:1: missing field 'question'"):
        load_reasoning_set(qfile)
    qfile.write_text(json.dumps({"id": "1", "image": "x.png", "question": "q", "masks": {}, "concepts": "polyp"}),
                     encoding="utf-8")
    with pytest.raises(ValueError, match="'concepts' should be a list"):
        load_reasoning_set(qfile)
    qfile.write_text("\n".join(json.dumps({"id": "1", "image": "x.png", "question": "q", "masks": {}}) for _ in "ab"),
                     encoding="utf-8")
    with pytest.raises(ValueError, match="duplicate case"):
        load_reasoning_set(qfile)


def write_reasonseg(folder: Path) -> None:
    write_image(folder / "scene.jpg", (50, 50))
    (folder / "scene.json").write_text(json.dumps({
        "text": ["the thing a cat would sleep on", "another phrasing"],
        "is_sentence": True,
        "shapes": [
            {"label": "target", "points": [[10, 10], [30, 10], [30, 30], [10, 30]]},
            {"label": "ignore", "points": [[25, 25], [35, 25], [35, 35], [25, 35]]},
            {"label": "flag", "points": [[0, 0], [49, 0], [49, 49]]},
        ],
    }), encoding="utf-8")
    write_image(folder / "short.jpg", (50, 50))
    (folder / "short.json").write_text(json.dumps({
        "text": ["sofa"], "is_sentence": False,
        "shapes": [{"label": "target", "points": [[0, 0], [9, 0], [9, 9], [0, 9]]}],
    }), encoding="utf-8")


def test_reasonseg_folder_loads_targets_with_ignore_pixels_and_scores(tmp_path):
    folder = tmp_path / "val"
    write_reasonseg(folder)
    cases = load_reasonseg(folder)
    assert [c.id for c in cases] == ["scene", "short"]
    scene, short = cases
    assert scene.question == "the thing a cat would sleep on" and scene.concepts == []
    assert short.question == "What is sofa in this image?" and short.concepts == ["sofa"]  # LISA's phrase template
    target = scene.load_target((50, 50))
    # outline + fill of [10..30]^2 is 21x21 = 441 px; the smaller ignore square is drawn later and takes
    # [25..30]^2 = 36 of them; the "flag" shape is skipped
    assert target.ignore.sum() == 11 * 11
    assert target.mask.sum() == 441 - 36
    assert not target.mask[0, 49] and not target.mask[27, 27] and target.ignore[27, 27]
    # the full square scores 1 (its ignored part does not count) and the spill into the ignore square too
    pred = np.zeros((50, 50), bool)
    pred[10:36, 10:36] = True
    pred[31:36, 10:25] = False
    pred[10:25, 31:36] = False
    score = score_case(pred, target.mask, target.ignore)
    assert score.dice == 1.0 and score.ignored == 121
    assert len(load_reasonseg(folder, all_texts=True)) == 3
    assert {c.source for c in load_path(folder)} == {"reasonseg"}


def test_reasonseg_errors_are_clear(tmp_path):
    folder = tmp_path / "rs"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps({"text": ["x"], "shapes": []}), encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="no image beside it"):
        load_reasonseg(folder)
    write_image(folder / "a.jpg")
    (folder / "a.json").write_text(json.dumps({"text": ["x"], "shapes": [{"label": "t", "points": [[1, 1], [2, 2]]}]}),
                                   encoding="utf-8")
    case = load_reasonseg(folder)[0]
    with pytest.raises(ValueError, match="at least 3"):
        case.load_target((40, 60))


def write_coco(folder: Path) -> Path:
    write_image(folder / "images" / "a.png", (40, 60))
    write_image(folder / "images" / "b.png", (30, 30))
    rle_mask = np.zeros((30, 30), dtype=np.uint8, order="F")
    rle_mask[5:15, 5:25] = 1
    rle = mask_utils.encode(rle_mask)
    rle["counts"] = rle["counts"].decode()
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 60, "height": 40},
                   {"id": 2, "file_name": "b.png", "width": 30, "height": 30},
                   {"id": 3, "file_name": "c.png", "width": 10, "height": 10}],
        "categories": [{"id": 1, "name": "polyp"}, {"id": 2, "name": "breast tumor"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 100, "bbox": [0, 0, 10, 10],
             "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
            {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 100, "bbox": [40, 20, 10, 10],
             "segmentation": [[40, 20, 50, 20, 50, 30, 40, 30]]},
            {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 50, "bbox": [20, 0, 10, 5],
             "segmentation": mask_utils.encode(np.asfortranarray(
                 np.pad(np.ones((5, 10), np.uint8), ((0, 35), (20, 30))))) | {}},
            {"id": 4, "image_id": 2, "category_id": 2, "iscrowd": 0, "area": 200, "bbox": [5, 5, 20, 10],
             "segmentation": rle},
        ],
    }
    coco["annotations"][2]["segmentation"]["counts"] = coco["annotations"][2]["segmentation"]["counts"].decode()
    path = folder / "instances_val.json"
    path.write_text(json.dumps(coco), encoding="utf-8")
    return path


def test_coco_file_loads_one_case_per_image_and_category_and_scores(tmp_path):
    path = write_coco(tmp_path / "coco")
    cases = load_coco(path)
    assert [(c.id, c.concepts) for c in cases] == [("1", ["polyp"]), ("2", ["breast tumor"])]  # image 3: no annotations
    assert cases[0].image == (tmp_path / "coco" / "images" / "a.png").resolve()  # found in images/
    polyp = cases[0].load_target((40, 60))
    assert polyp.mask[5, 5] and polyp.mask[25, 45] and not polyp.mask[20, 20]
    assert polyp.ignore is not None and polyp.ignore.sum() == 50 and polyp.ignore[2, 25]
    tumor = cases[1].load_target((30, 30))
    assert tumor.mask.sum() == 200 and tumor.ignore is None
    score = score_case(tumor.mask, tumor.mask)
    assert score.dice == 1.0
    half = tumor.mask.copy()
    half[:, 15:] = False
    assert score_case(half, tumor.mask).dice == pytest.approx(2 * 100 / 300)
    assert [c.id for c in load_path(path, concepts=["breast tumor"])] == ["2"]
    with pytest.raises(ValueError, match="annotated as 30x30"):
        cases[1].load_target((31, 30))


def test_unknown_inputs_get_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_path(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a dataset this benchmark reads"):
        load_path(tmp_path / "empty")
