"""MedSAM3-Lite through the public `Segmenter` API: real shipped weights, real shared images."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import dice, read_mask, val_rows

from segmenter import Box, ImageError, Point, Prompt, Segmenter


@pytest.fixture(scope="module")
def polyp_case():
    row = val_rows("kvasir_seg", limit=1)[0]
    return row["image"], read_mask(row["masks"]["polyp"])


def test_box_prompt_returns_one_instance_inside_the_box(segmenter, polyp_case):
    image, gt = polyp_case
    ys, xs = np.nonzero(gt)
    box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    result = segmenter.segment(image, boxes=[box])
    assert result.image_size == gt.shape
    assert len(result.instances) == 1
    inst = result.instances[0]
    assert inst.mask.shape == gt.shape and inst.mask.dtype == bool
    # LiteMedSAM with a tight box is a strong segmenter: the box prompt alone finds the polyp
    assert dice(inst.mask, gt) > 0.7
    assert inst.box.x0 >= box[0] - 10 and inst.box.x1 <= box[2] + 10
    assert result.presence == 1.0


def test_point_prompt_segments_the_object_under_the_point(segmenter, polyp_case):
    image, gt = polyp_case
    import cv2

    dist = cv2.distanceTransform(gt.astype(np.uint8), cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    result = segmenter.segment(image, points=[(float(x), float(y))])
    assert len(result.instances) == 1
    assert result.instances[0].mask[y, x]  # the clicked pixel is in the mask


def test_embedding_is_computed_once_per_image(polyp_case):
    image, _ = polyp_case
    seg = Segmenter()
    seg.set_image(image)
    seg.segment(concept="polyp")
    after_first = seg.backend.encode_count
    seg.segment(concept="colon polyp")
    seg.segment(boxes=[[10, 10, 200, 200]])
    seg.set_image(image)  # the same pixels again: cache hit
    seg.segment(concept="polyp", boxes=[Box(x0=10, y0=10, x1=200, y1=200)])
    assert after_first == 1
    assert seg.backend.encode_count == 1


def test_masks_come_back_at_the_original_size_for_any_shape(segmenter):
    rng = np.random.default_rng(0)
    for shape in [(37, 300), (300, 37, 3), (129, 129, 4)]:
        image = rng.integers(0, 255, size=shape, dtype=np.uint8)
        result = segmenter.segment(image, boxes=[[2, 2, 30, 30]])
        assert result.image_size == shape[:2]
        for inst in result.instances:
            assert inst.mask.shape == shape[:2]


def test_sixteen_bit_grey_image_is_accepted(segmenter):
    image = np.zeros((120, 160), np.uint16)
    image[40:80, 60:110] = 30000
    result = segmenter.segment(image, boxes=[[55, 35, 115, 85]])
    assert len(result.instances) == 1
    mask = result.instances[0].mask
    assert mask[60, 85] and not mask[5, 5]


def test_concept_result_is_well_formed(segmenter, polyp_case):
    image, _ = polyp_case
    result = segmenter.segment(image, "polyp")
    assert 0.0 <= result.presence <= 1.0
    assert set(result.timings_ms) == {"encode", "decode"}
    for inst in result.instances:
        assert inst.area == int(inst.mask.sum()) > 0
        assert 0.0 <= inst.score <= 1.0
    summary = result.summary()
    assert summary["prompt"]["concept"] == "polyp"
    assert len(summary["instances"]) == len(result.instances)


def test_prompt_errors_are_clear(segmenter, polyp_case):
    image, _ = polyp_case
    segmenter.set_image(image)
    with pytest.raises(ValueError, match="needs a concept, a box or a point"):
        segmenter.segment()
    with pytest.raises(ValueError, match="outside"):
        segmenter.segment(boxes=[[5000, 5000, 6000, 6000]])
    with pytest.raises(ValueError, match="outside"):
        segmenter.segment(points=[Point(x=-5, y=3)])
    with pytest.raises(ValueError, match="x1 > x0"):
        segmenter.segment(boxes=[[50, 50, 10, 10]])
    with pytest.raises(ValueError, match="empty"):
        Prompt(concept="   ")
    with pytest.raises(ImageError):
        segmenter.segment(b"not an image", "polyp")


def test_missing_and_corrupt_weights_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights not found"):
        Segmenter(weights=tmp_path / "absent.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a valid safetensors"):
        Segmenter(weights=bad)


def test_weights_of_the_wrong_model_are_refused(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"concept_head.trunk.0.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(ValueError, match="do not fit"):
        Segmenter(weights=path)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown segmenter backend 'nope'"):
        Segmenter("nope")


def test_segment_cli_writes_masks_overlay_and_json(tmp_path, polyp_case):
    import json

    from agent.cli import main

    image, gt = polyp_case
    out = tmp_path / "out"
    assert main(["segment", str(image), "polyp", "--out", str(out)]) == 0
    summary = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert summary["concept"] == "polyp" and summary["backend"] == "medsam3-lite"
    assert {"encode", "decode", "load_model"} <= set(summary["timings_ms"])
    assert (out / "overlay.png").exists()
    union = read_mask(out / summary["union_mask"])
    assert union.shape == gt.shape
    for inst in summary["instances"]:
        assert read_mask(out / inst["path"]).any()


def test_segment_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    from agent.cli import main

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert main(["segment", str(empty), "polyp", "--out", str(tmp_path / "o")]) == 2
    assert "file is empty" in capsys.readouterr().err
    assert main(["segment", str(empty), "--out", str(tmp_path / "o")]) == 2
    shutil.rmtree(tmp_path / "o", ignore_errors=True)


def test_a_concept_below_its_presence_gate_is_not_decoded(segmenter, monkeypatch):
    """Presence comes first: where the gate says absent no mask would be kept, so the concept decoder (and its
    box refine) does not run; with the gate at 0 the same prompt is decoded and drawn."""
    from pathlib import Path

    image = str(Path(__file__).parents[1] / "examples" / "chest_xray_pa_radiopaedia_9171.jpg")
    backend = segmenter.backend
    decoded: list[str] = []
    real = backend._decode_concept
    monkeypatch.setattr(backend, "_decode_concept", lambda *a, **k: decoded.append("x") or real(*a, **k))
    absent = segmenter.segment(image, "polyp")  # a colonoscopy concept on a chest X-ray
    assert absent.presence < backend.gate("polyp") and absent.instances == [] and absent.refine == "none"
    assert decoded == []
    ungated = segmenter.segment(image, "polyp", presence_threshold=0.0)
    assert decoded == ["x"] and ungated.presence == absent.presence
    lungs = segmenter.segment(image, "lung")
    assert decoded == ["x", "x"] and lungs.presence >= backend.gate("lung") and lungs.instances
