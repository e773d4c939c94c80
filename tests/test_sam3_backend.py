"""The sam3 backend on a tiny random-weight SAM 3: real processor, real model code, real post-processing.

These tests exercise the code path with random weights, not SAM 3's or MedSAM3's released ones, so
they check shapes, wiring and settings, never segmentation quality.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sam3_tiny import tiny_model, tiny_processor
from test_sam3_lora import ALPHA, RANK, native_lora

from segmenter import Box, Point, Prompt, Segmenter, build_backend
from segmenter.sam3 import PostProcess, Sam3Backend
from segmenter.sam3.loading import pick_dtype

H, W = 300, 400
KEEP_ALL = PostProcess(score_threshold=0.0, nms_iou=None, box_filter="none")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = (rng.random((H, W, 3)) * 60).astype(np.uint8)
    img[80:200, 120:260] += 150  # a bright block, so the picture is not pure noise
    return img


@pytest.fixture()
def backend() -> Sam3Backend:
    return Sam3Backend(net=tiny_model(), processor=tiny_processor(), postprocess=KEEP_ALL, device="cpu")


def test_text_prompt_gives_instances_at_image_size(backend, image):
    seg = Segmenter(backend)
    result = seg.segment(image, "polyp")
    assert result.backend == "sam3" and result.image_size == (H, W)
    assert 0.0 <= result.presence <= 1.0
    assert result.instances, "with no score threshold every non-empty query is an instance"
    for inst in result.instances:
        assert inst.mask.shape == (H, W) and inst.mask.dtype == bool
        assert inst.area == int(inst.mask.sum()) > 0
        ys, xs = np.nonzero(inst.mask)
        assert inst.box.as_list() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    scores = [i.score for i in result.instances]
    assert scores == sorted(scores, reverse=True)
    assert set(result.timings_ms) == {"encode", "decode"}


def test_text_plus_box_reaches_the_geometry_encoder_normalised(backend, image):
    seen = []
    hook = backend.net.geometry_encoder.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs["box_embeddings"].clone()), with_kwargs=True
    )
    try:
        result = Segmenter(backend).segment(image, "polyp", boxes=[[40, 30, 200, 150]])
    finally:
        hook.remove()
    # transformers' processor turns pixel xyxy into normalised (cx, cy, w, h)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], torch.tensor([[[0.3, 0.3, 0.4, 0.4]]]))
    assert len(result.instances) > 0  # box_filter "none": SAM 3's exemplar meaning, objects anywhere

    backend.postprocess = KEEP_ALL.model_copy(update={"box_filter": "inside"})
    inside = Segmenter(backend).segment(image, "polyp", boxes=[[40, 30, 200, 150]])
    assert len(inside.instances) <= len(result.instances)
    for inst in inside.instances:  # the agent's meaning: the concept within the box
        assert inst.mask[30:150, 40:200].sum() >= 0.5 * inst.area


def test_box_only_prompt_uses_the_visual_text_and_reports_presence_one(backend, image):
    texts = []
    hook = backend.net.text_encoder.register_forward_hook(
        lambda module, args, kwargs, out: texts.append(kwargs["input_ids"].clone()), with_kwargs=True
    )
    try:
        result = Segmenter(backend).segment(image, boxes=[[10, 10, 100, 100]])
    finally:
        hook.remove()
    visual = backend.processor.tokenizer("visual", padding="max_length", max_length=32, return_tensors="pt")
    assert torch.equal(texts[0], visual["input_ids"])
    assert result.presence == 1.0


def test_batched_prompts_encode_the_image_once_and_equal_single_prompts(image):
    backend = Sam3Backend(net=tiny_model(), processor=tiny_processor(), postprocess=KEEP_ALL)
    prompts = [
        Prompt(concept="polyp"),
        Prompt(concept="skin lesion"),
        Prompt(concept="lung", boxes=[Box(x0=20, y0=20, x1=220, y1=180)]),
        Prompt(boxes=[Box(x0=50, y0=60, x1=150, y1=160)]),
        Prompt(concept="optic disc"),
    ]
    backend.set_image(image)
    batched = backend.segment_many(prompts)
    backend.set_image(image.copy())  # same pixels: cached features
    single = [backend.segment(p) for p in prompts]
    assert backend.encode_count == 1
    for a, b in zip(batched, single, strict=True):
        assert a.prompt == b.prompt
        assert a.presence == pytest.approx(b.presence, abs=1e-5)
        assert len(a.instances) == len(b.instances)
        np.testing.assert_allclose([i.score for i in a.instances], [i.score for i in b.instances], atol=1e-5)
        mismatched = sum(int((x.mask != y.mask).sum()) for x, y in zip(a.instances, b.instances, strict=True))
        assert mismatched <= 0.001 * H * W * max(len(a.instances), 1)  # float noise at a few boundary pixels at most
    backend.set_image(np.ascontiguousarray(image[::-1]))
    backend.segment(prompts[0])
    assert backend.encode_count == 2


def test_point_prompts_are_refused_clearly(backend, image):
    backend.set_image(image)
    with pytest.raises(ValueError, match="point prompts are not part of SAM 3"):
        backend.segment(Prompt(points=[Point(x=5, y=5)]))
    with pytest.raises(RuntimeError, match="no image set"):
        Sam3Backend(net=tiny_model(), processor=tiny_processor()).segment(Prompt(concept="polyp"))


def test_dtype_and_device_choice(image):
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("fp16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="dtype must be"):
        pick_dtype("int8", torch.device("cpu"))
    backend = Sam3Backend(net=tiny_model(), processor=tiny_processor(), dtype="bf16", postprocess=KEEP_ALL)
    assert next(backend.net.parameters()).dtype == torch.bfloat16
    result = Segmenter(backend).segment(image, "polyp", boxes=[[40, 30, 200, 150]])
    assert backend.info()["dtype"] == "bfloat16" and result.image_size == (H, W)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            Sam3Backend(net=tiny_model(), processor=tiny_processor(), device="cuda")


def test_loads_a_saved_checkpoint_with_a_lora_from_a_settings_file(tmp_path, image):
    """The user's path: a transformers SAM 3 folder + a native MedSAM3 LoRA file + a YAML settings file."""
    model = tiny_model(seed=5)
    model.save_pretrained(tmp_path / "sam3")
    tiny_processor().save_pretrained(tmp_path / "sam3")
    lora = native_lora(model, seed=7)
    torch.save(lora, tmp_path / "best_lora_weights.pt")
    (tmp_path / "medsam3.yaml").write_text(
        "model: sam3\n"
        f"lora:\n  path: best_lora_weights.pt\n  rank: {RANK}\n  alpha: {ALPHA}\n"
        "device: cpu\ndtype: fp32\npostprocess:\n  score_threshold: 0.0\n"
    , encoding="utf-8")
    backend = build_backend("sam3", config=str(tmp_path / "medsam3.yaml"))
    assert backend.name == "medsam3"
    info = backend.info()
    assert info["lora"]["modules"] == len(lora) // 2 and info["lora"]["rank"] == RANK
    assert info["postprocess"]["nms_iou"] == 0.5 and info["postprocess"]["use_presence"] is False  # medsam3 preset
    merged = backend.net.state_dict()["vision_encoder.backbone.layers.1.mlp.fc2.weight"]
    original = model.state_dict()["vision_encoder.backbone.layers.1.mlp.fc2.weight"]
    assert not torch.equal(merged, original)
    result = Segmenter(backend).segment(image, "polyp")
    assert result.backend == "medsam3" and result.image_size == (H, W)

    # keywords override the file; a JSON file works the same
    plain_config = json.dumps({"model": str(tmp_path / "sam3"), "device": "cpu"})
    (tmp_path / "plain.json").write_text(plain_config, encoding="utf-8")
    plain = Sam3Backend(config=str(tmp_path / "plain.json"), dtype="fp32")
    assert plain.name == "sam3" and plain.lora is None
    torch.testing.assert_close(plain.net.state_dict()["vision_encoder.backbone.layers.1.mlp.fc2.weight"], original)


def test_missing_model_or_settings_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="SAM 3 model folder not found"):
        Sam3Backend(model=str(tmp_path / "nowhere"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        Sam3Backend(model=str(tmp_path / "empty"), device="cpu")
    monkeypatch.delenv("MEDSAM3_SAM3_CONFIG", raising=False)
    monkeypatch.delenv("MEDSAM3_SAM3_MODEL", raising=False)
    with pytest.raises(ValueError, match="MEDSAM3_SAM3_CONFIG"):
        build_backend("sam3")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\ndtype: int4\n", encoding="utf-8")
    with pytest.raises(ValueError, match="dtype"):
        Sam3Backend(config=str(bad))


def test_postprocess_overrides_are_validated_on_top_of_the_preset(image):
    backend = Sam3Backend(net=tiny_model(), processor=tiny_processor(), postprocess={"min_area": 50})
    assert backend.postprocess == PostProcess.transformers(min_area=50)  # no LoRA: the transformers preset
    with pytest.raises(ValueError, match="score_threshold"):
        Sam3Backend(net=tiny_model(), processor=tiny_processor(), postprocess={"score_threshold": 2})
