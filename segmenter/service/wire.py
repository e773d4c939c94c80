"""What travels between the segmenter server and the ``remote`` backend: pydantic bodies, COCO RLE masks."""

from __future__ import annotations

from pydantic import BaseModel, Field

from segmenter.catalog import Refine
from segmenter.rle import Rle, decode
from segmenter.types import MAX_PROMPTS, Box, Instance, Prompt, SegmentationResult

API_VERSION = 1


class WireInstance(BaseModel):
    rle: Rle
    score: float
    box: Box
    area: int


class WireResult(BaseModel):
    prompt: Prompt
    instances: list[WireInstance]
    presence: float
    image_size: tuple[int, int]
    backend: str
    timings_ms: dict[str, float] = Field(default_factory=dict)
    refine: Refine = "none"  # SegmentationResult.refine; servers before it did not say ("none": masks as drawn)

    @classmethod
    def from_result(cls, result: SegmentationResult) -> WireResult:
        return cls(
            prompt=result.prompt,
            instances=[
                WireInstance(rle=Rle.of(i.mask), score=i.score, box=i.box, area=i.area) for i in result.instances
            ],
            presence=result.presence,
            image_size=result.image_size,
            backend=result.backend,
            timings_ms=result.timings_ms,
            refine=result.refine,
        )

    def to_result(self) -> SegmentationResult:
        instances = []
        for inst in self.instances:
            mask = decode(inst.rle)
            if mask.shape != tuple(self.image_size):
                raise ValueError(f"server sent a {mask.shape} mask for a {self.image_size} image")
            instances.append(Instance(mask=mask, score=inst.score, box=inst.box, area=inst.area))
        return SegmentationResult(
            prompt=self.prompt,
            instances=instances,
            presence=self.presence,
            image_size=self.image_size,
            backend=self.backend,
            timings_ms=self.timings_ms,
            refine=self.refine,
        )


class SegmentRequest(BaseModel):
    prompts: list[Prompt] = Field(min_length=1, max_length=MAX_PROMPTS)  # each capped by Prompt itself


class SegmentResponse(BaseModel):
    image_id: str
    results: list[WireResult]


class ImageInfo(BaseModel):
    image_id: str
    height: int
    width: int


class ServerInfo(BaseModel):
    api_version: int = API_VERSION
    backend: str
    concepts: list[str]
    device: str
    max_upload_mb: float
    max_megapixels: float | None = None  # servers before the pixel budget did not say
    details: dict = Field(default_factory=dict)  # the backend's own info(): model, dtype, LoRA, ...
