"""SAM 3 post-processing: thresholds, presence, NMS, containment, area, box filter, and the two references."""

from __future__ import annotations

import numpy as np
import torch
from sam3_tiny import tiny_model, tiny_processor

from segmenter.sam3.postprocess import PostProcess, to_instances
from segmenter.sam3.settings import Sam3Settings
from segmenter.types import Box

LOW, FULL = 16, (32, 32)  # mask logits at 16x16, image 32x32


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def queries():
    """Q0 left half (0.9); Q1 the same object again (0.8); Q2 weak (0.2); Q3 a blob inside Q0 (0.7)."""
    masks = torch.full((4, LOW, LOW), -10.0)
    masks[0, :, :8] = 10
    masks[1, :, :8] = 10
    masks[2, :, 8:] = 10
    masks[3, 2:6, 2:6] = 10
    boxes = torch.tensor([[0, 0, 0.5, 1], [0, 0, 0.5, 1], [0.5, 0, 1, 1], [0.125, 0.125, 0.375, 0.375]])
    scores = torch.tensor([logit(0.9), logit(0.8), logit(0.2), logit(0.7)])
    return scores, boxes, masks


def run(settings: PostProcess, presence: float | None = None, prompt_boxes=None):
    scores, boxes, masks = queries()
    presence_logit = torch.tensor([logit(presence)]) if presence is not None else None
    return to_instances(scores, presence_logit, boxes, masks, FULL, settings, prompt_boxes)


def test_presets_match_the_references():
    m, t = PostProcess.medsam3(), PostProcess.transformers()
    assert (m.score_threshold, m.use_presence, m.nms_iou) == (0.5, False, 0.5)  # MedSAM3 infer_sam.py
    assert (t.score_threshold, t.use_presence, t.nms_iou) == (0.3, True, None)  # transformers' post-processing
    assert PostProcess() == m
    with_lora = Sam3Settings.parse({"model": "x", "lora": {"path": "l.pt"}})
    assert with_lora.postprocess_settings() == m and (with_lora.lora.rank, with_lora.lora.alpha) == (16, 32)
    plain = Sam3Settings.parse({"model": "x", "postprocess": {"min_area": 9}})
    assert plain.postprocess_settings() == PostProcess.transformers(min_area=9)


def test_medsam3_defaults_threshold_then_nms():
    found = run(PostProcess.medsam3())
    # Q1 duplicates Q0 (box IoU 1) and goes to NMS; Q2 is under 0.5; Q3's box overlaps Q0's little
    assert [round(i.score, 3) for i in found] == [0.9, 0.7]
    assert found[0].mask.shape == FULL and found[0].mask.dtype == bool
    assert found[0].mask[:, :16].all() and not found[0].mask[:, 16:].any()
    assert found[0].box.as_list() == [0, 0, 16, 32] and found[0].area == 512


def test_without_nms_duplicates_stay():
    assert [round(i.score, 3) for i in run(PostProcess.medsam3(nms_iou=None))] == [0.9, 0.8, 0.7]


def test_presence_weighting_scales_scores():
    assert [round(i.score, 3) for i in run(PostProcess.medsam3(score_threshold=0.3), presence=0.5)] == [0.9, 0.7]
    weighted = run(PostProcess.medsam3(score_threshold=0.3, use_presence=True), presence=0.5)
    assert [round(i.score, 3) for i in weighted] == [0.45, 0.35]


def test_containment_removes_instances_inside_a_better_one():
    assert [round(i.score, 3) for i in run(PostProcess.medsam3(containment=0.8))] == [0.9]


def test_min_area_drops_small_instances():
    assert [i.area for i in run(PostProcess.medsam3(min_area=100))] == [512]


def test_box_filter_keeps_instances_inside_the_prompt_box():
    right = [Box(x0=16, y0=0, x1=32, y1=32)]
    assert [round(i.score, 3) for i in run(PostProcess.medsam3(score_threshold=0.1), prompt_boxes=right)] == [0.2]
    kept = run(PostProcess.medsam3(score_threshold=0.1, box_filter="none"), prompt_boxes=right)
    assert len(kept) == 3


def test_transformers_preset_equals_transformers_post_processing():
    """On a real (tiny) model's output, our transformers preset gives transformers' own instances."""
    model, processor = tiny_model(seed=3), tiny_processor()
    image = (np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)
    inputs = processor(images=image, text=["polyp", "skin lesion"], return_tensors="pt")
    inputs["pixel_values"] = inputs["pixel_values"].expand(2, -1, -1, -1)
    with torch.no_grad():
        out = model(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                    attention_mask=inputs["attention_mask"])
    # random weights score near 0.5 x presence; a threshold inside that range keeps some and drops others
    scores = (out.pred_logits.sigmoid() * out.presence_logits.sigmoid()).flatten()
    threshold = float(scores.median())
    reference = processor.post_process_instance_segmentation(
        out, threshold=threshold, mask_threshold=0.5, target_sizes=[(90, 120)] * 2
    )
    for i in range(2):
        ours = to_instances(out.pred_logits[i], out.presence_logits[i], out.pred_boxes[i], out.pred_masks[i],
                            (90, 120), PostProcess.transformers(score_threshold=threshold))
        ref = reference[i]
        keep = ref["masks"].flatten(1).sum(1) > 0  # we drop empty masks; transformers keeps them
        order = ref["scores"][keep].argsort(descending=True)
        ref_scores = ref["scores"][keep][order]
        ref_masks = ref["masks"][keep][order].bool().numpy()
        assert len(ours) == len(ref_scores) > 0
        np.testing.assert_allclose([x.score for x in ours], ref_scores.numpy(), rtol=1e-6)
        for inst, mask in zip(ours, ref_masks, strict=True):
            assert np.array_equal(inst.mask, mask)
