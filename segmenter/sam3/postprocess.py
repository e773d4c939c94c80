"""SAM 3 outputs for one prompt -> instances: score, NMS, containment, area, box filter.

Two references disagree, so the settings name both (``PostProcess.medsam3()`` and
``PostProcess.transformers()``):

- MedSAM3's ``infer_sam.py``: detection score ``sigmoid(logit)`` without the presence factor,
  threshold 0.5, then box NMS at IoU 0.5.
- transformers' ``post_process_instance_segmentation``: score ``sigmoid(logit) * sigmoid(presence)``,
  threshold 0.3, no NMS.

Masks follow transformers: mask probabilities (sigmoid of the logits) are resized (bilinear) to
the image, then thresholded at ``mask_threshold``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torchvision.ops import nms

from segmenter.types import Box, Instance


class PostProcess(BaseModel):
    """User-settable post-processing. Defaults are MedSAM3's inference settings."""

    score_threshold: float = Field(0.5, ge=0.0, le=1.0, description="keep queries whose score is above this")
    use_presence: bool = Field(False, description="multiply each query's score by the image-level presence")
    nms_iou: float | None = Field(0.5, gt=0.0, le=1.0, description="box NMS IoU; None turns NMS off")
    containment: float | None = Field(
        None, gt=0.0, le=1.0, description="drop an instance when this share of it lies inside a higher-scoring one"
    )
    min_area: int = Field(0, ge=0, description="drop instances with fewer pixels")
    mask_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="mask probability threshold")
    box_filter: Literal["inside", "none"] = Field(
        "inside",
        description="concept+box prompts: 'inside' keeps instances mostly inside the prompt boxes (the agent's "
        "meaning of a box); 'none' keeps SAM 3's exemplar meaning (every object like the boxed one)",
    )
    max_instances: int = Field(100, ge=1)

    @classmethod
    def medsam3(cls, **overrides) -> PostProcess:
        return cls(**{"score_threshold": 0.5, "use_presence": False, "nms_iou": 0.5, **overrides})

    @classmethod
    def transformers(cls, **overrides) -> PostProcess:
        return cls(**{"score_threshold": 0.3, "use_presence": True, "nms_iou": None, **overrides})


def _containment_keep(masks: torch.Tensor, limit: float) -> list[int]:
    """Greedy, in score order: drop a mask when ``limit`` of its area lies in an already kept one."""
    areas = masks.flatten(1).sum(1).clamp(min=1)
    kept: list[int] = []
    for i in range(len(masks)):
        if all((masks[i] & masks[j]).sum() / areas[i] < limit for j in kept):
            kept.append(i)
    return kept


def _inside_share(masks: torch.Tensor, boxes: list[Box]) -> torch.Tensor:
    h, w = masks.shape[-2:]
    region = torch.zeros((h, w), dtype=torch.bool, device=masks.device)
    for b in boxes:
        region[int(b.y0) : int(np.ceil(b.y1)), int(b.x0) : int(np.ceil(b.x1))] = True
    areas = masks.flatten(1).sum(1).clamp(min=1)
    return (masks & region).flatten(1).sum(1) / areas


def to_instances(
    logits: torch.Tensor,
    presence_logit: torch.Tensor | None,
    boxes: torch.Tensor,
    mask_logits: torch.Tensor,
    image_size: tuple[int, int],
    settings: PostProcess,
    prompt_boxes: list[Box] | None = None,
) -> list[Instance]:
    """One prompt's queries -> instances at image size, best first.

    ``logits`` (Q,), ``boxes`` (Q, 4) normalised xyxy, ``mask_logits`` (Q, h, w), all for one prompt.
    """
    h, w = image_size
    scores = logits.float().sigmoid()
    if settings.use_presence and presence_logit is not None:
        scores = scores * presence_logit.float().sigmoid().reshape(())
    keep = torch.nonzero(scores > settings.score_threshold).flatten()
    if keep.numel() == 0:
        return []
    scores, boxes, mask_logits = scores[keep], boxes[keep].float(), mask_logits[keep]
    order = scores.argsort(descending=True)
    scores, boxes, mask_logits = scores[order], boxes[order], mask_logits[order]
    pixel_boxes = boxes * torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
    if settings.nms_iou is not None:
        kept = nms(pixel_boxes, scores, settings.nms_iou)  # indices, by decreasing score
        scores, mask_logits = scores[kept], mask_logits[kept]
    chunks = []
    for start in range(0, len(mask_logits), 16):  # bounded memory for large images
        probs = mask_logits[start : start + 16][None].float().sigmoid()
        chunks.append(F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)[0]
                      > settings.mask_threshold)
    masks = torch.cat(chunks)
    valid = masks.flatten(1).sum(1) >= max(settings.min_area, 1)
    if prompt_boxes and settings.box_filter == "inside":
        valid &= _inside_share(masks, prompt_boxes) >= 0.5
    scores, masks = scores[valid], masks[valid]
    if settings.containment is not None and len(masks) > 1:
        kept_idx = _containment_keep(masks, settings.containment)
        scores, masks = scores[kept_idx], masks[kept_idx]
    masks_np = masks[: settings.max_instances].cpu().numpy()
    kept_scores = scores[: settings.max_instances].tolist()
    return [Instance.from_mask(m, float(s)) for m, s in zip(masks_np, kept_scores, strict=True)]
