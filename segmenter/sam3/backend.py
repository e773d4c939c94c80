"""SAM 3 / MedSAM3 backend: transformers' ``Sam3Model`` behind the ``SegmenterBackend`` interface.

The image is encoded once (``get_vision_features``) and kept in a small LRU; every prompt on it
reuses those features, and ``segment_many`` decodes several prompts in one batch.
Prompts: a concept phrase, a concept plus boxes, or boxes alone (SAM 3's "visual" prompt).
Point prompts are not part of SAM 3's concept model and are refused.
"""

from __future__ import annotations

import time
from itertools import groupby
from typing import Any

import numpy as np
import torch

from segmenter.base import EmbeddingCache, SegmenterBackend, image_key
from segmenter.catalog import load_catalog
from segmenter.sam3.loading import load_sam3, pick_device, pick_dtype
from segmenter.sam3.lora import LoraMerge, merge_lora
from segmenter.sam3.postprocess import PostProcess, to_instances
from segmenter.sam3.settings import Sam3Settings
from segmenter.types import Prompt, SegmentationResult

VISUAL_PROMPT = "visual"  # the text SAM 3 pairs with box-only prompts (transformers' processor does the same)


class _Encoded:
    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.features = None  # Sam3VisionEncoderOutput with batch size 1, made on first prompt


class Sam3Backend(SegmenterBackend):
    name = "sam3"

    def __init__(
        self,
        model: str | None = None,
        *,
        config: str | None = None,
        lora: str | None = None,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        device: str | None = None,
        dtype: str | None = None,
        postprocess: PostProcess | dict | None = None,
        settings: Sam3Settings | None = None,
        net: Any = None,
        processor: Any = None,
    ) -> None:
        """Build from ``settings``, a settings file (``config``), or keywords; ``net``/``processor`` inject a model.

        Keywords override the file. With nothing given, ``MEDSAM3_SAM3_CONFIG`` / ``MEDSAM3_SAM3_MODEL`` are read.
        """
        if settings is None:
            settings = self._settings(model, config, lora, lora_rank, lora_alpha, device, dtype, net)
        self.settings = settings
        self.device = pick_device(settings.device)
        self.dtype = pick_dtype(settings.dtype, self.device)
        if net is None:
            net, processor = load_sam3(settings.model, self.device, self.dtype)
        elif processor is None:
            raise ValueError("pass the Sam3Processor together with an injected Sam3Model")
        else:
            net = net.to(device=self.device, dtype=self.dtype).eval()
        self.net, self.processor = net, processor
        self.lora: LoraMerge | None = None
        if settings.lora is not None:
            self.lora = merge_lora(self.net, settings.lora.path, settings.lora.rank, settings.lora.alpha)
            self.name = "medsam3"
        if isinstance(postprocess, dict):  # overrides on top of the preset, validated
            postprocess = PostProcess.model_validate({**settings.postprocess_settings().model_dump(), **postprocess})
        self.postprocess = postprocess or settings.postprocess_settings()
        self._concepts = settings.concepts or load_catalog().names
        self._cache: EmbeddingCache[_Encoded] = EmbeddingCache(int(settings.cache_mb * 2**20),
                                                               max_items=settings.cache_images)
        self._current: _Encoded | None = None
        self._encode_count = 0

    @staticmethod
    def _settings(model, config, lora, lora_rank, lora_alpha, device, dtype, net) -> Sam3Settings:
        lora_part = None
        if lora is not None:
            lora_part = {"path": lora, **({"rank": lora_rank} if lora_rank else {}),
                         **({"alpha": lora_alpha} if lora_alpha else {})}
        overrides = {"model": model, "lora": lora_part, "device": device, "dtype": dtype}
        if config is not None:
            settings = Sam3Settings.from_file(config, **overrides)
            if lora is None and settings.lora is not None and (lora_rank or lora_alpha):
                update = {k: v for k, v in (("rank", lora_rank), ("alpha", lora_alpha)) if v}
                settings = settings.model_copy(update={"lora": settings.lora.model_copy(update=update)})
            return settings
        if model is None and net is None:
            return Sam3Settings.from_env()
        data = {k: v for k, v in overrides.items() if v is not None}
        data.setdefault("model", "<in memory>")
        return Sam3Settings.parse(data)

    # --- images ------------------------------------------------------------------
    def set_image(self, image: np.ndarray) -> str:
        key = image_key(image)
        encoded = self._cache.get(key)
        if encoded is None:
            encoded = _Encoded(image)
            self._cache.put(key, encoded)
        self._current = encoded
        return key

    @torch.inference_mode()
    def _features(self, enc: _Encoded):
        if enc.features is None:
            image = enc.image if enc.image.flags.writeable else enc.image.copy()  # torch wants writable memory
            pixels = self.processor(images=image, return_tensors="pt")["pixel_values"]
            enc.features = self.net.get_vision_features(pixel_values=pixels.to(self.device, self.dtype))
            self._encode_count += 1
            self._cache.fit()  # the entry just grew by its features
        return enc.features

    @staticmethod
    def _repeat(features, n: int):
        """The batch-1 vision features as a batch of ``n`` (views, no copies)."""
        return type(features)(
            last_hidden_state=features.last_hidden_state,
            fpn_hidden_states=tuple(t.expand(n, *t.shape[1:]) for t in features.fpn_hidden_states),
            fpn_position_encoding=tuple(t.expand(n, *t.shape[1:]) for t in features.fpn_position_encoding),
        )

    # --- prompts -----------------------------------------------------------------
    def concepts(self) -> list[str]:
        return list(self._concepts)

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "model": self.settings.model,
            "lora": self.lora.summary() if self.lora else None,
            "postprocess": self.postprocess.model_dump(),
        }

    def segment(self, prompt: Prompt) -> SegmentationResult:
        return self.segment_many([prompt])[0]

    def segment_many(self, prompts: list[Prompt]) -> list[SegmentationResult]:
        """Answer several prompts on the current image; the image is encoded at most once."""
        if self._current is None:
            raise RuntimeError("no image set: call set_image(image) first")
        for prompt in prompts:
            if prompt.points:
                raise ValueError(
                    "the sam3 backend answers concept and box prompts; point prompts are not part of SAM 3's "
                    "concept model (use the lite backend for points)"
                )
        enc = self._current
        start = time.perf_counter()
        encodes = self._encode_count
        features = self._features(enc)
        encode_ms = (time.perf_counter() - start) * 1000 if self._encode_count > encodes else 0.0
        results: list[SegmentationResult | None] = [None] * len(prompts)
        # equal box counts batch without padding, so a batched answer equals the single one
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].boxes))
        for _, same_count in groupby(order, key=lambda i: len(prompts[i].boxes)):
            group = list(same_count)
            for at in range(0, len(group), self.settings.batch_size):
                chunk = group[at : at + self.settings.batch_size]
                t0 = time.perf_counter()
                answers = self._decode(enc, features, [prompts[i] for i in chunk])
                per_prompt = (time.perf_counter() - t0) * 1000 / len(chunk)
                for i, answer in zip(chunk, answers, strict=True):
                    answer.timings_ms = {"encode": encode_ms, "decode": per_prompt}
                    results[i] = answer
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _decode(self, enc: _Encoded, features, prompts: list[Prompt]) -> list[SegmentationResult]:
        h, w = enc.image.shape[:2]
        n = len(prompts)
        texts = [p.concept if p.concept is not None else VISUAL_PROMPT for p in prompts]
        boxes = [[b.as_list() for b in p.boxes] for p in prompts]
        inputs = self.processor(
            text=texts,
            input_boxes=boxes if boxes[0] else None,
            original_sizes=[[h, w]] * n,
            return_tensors="pt",
        )
        extra = {}
        if "input_boxes" in inputs:
            extra["input_boxes"] = inputs["input_boxes"].to(self.device, self.dtype)
            extra["input_boxes_labels"] = inputs["input_boxes_labels"].to(self.device)
        out = self.net(
            vision_embeds=self._repeat(features, n),
            input_ids=inputs["input_ids"].to(self.device),
            attention_mask=inputs["attention_mask"].to(self.device),
            **extra,
        )
        answers = []
        for i, prompt in enumerate(prompts):
            presence_logit = out.presence_logits[i] if out.presence_logits is not None else None
            instances = to_instances(
                out.pred_logits[i], presence_logit, out.pred_boxes[i], out.pred_masks[i], (h, w),
                self.postprocess, prompt.boxes or None,
            )
            presence = 1.0
            if prompt.concept is not None and presence_logit is not None:
                presence = float(presence_logit.float().sigmoid().reshape(()))
            answers.append(
                SegmentationResult(prompt=prompt, instances=instances, presence=presence, image_size=(h, w),
                                   backend=self.name)
            )
        return answers
