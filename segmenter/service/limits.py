"""What one segmenter server may spend: upload, pixel, store and decode budgets (pydantic only).

Kept apart from the HTTP code (``guard.RequestGuard`` applies them per request) so that the
``serve-segmenter`` command can show its defaults in ``--help`` without the [serve] extra.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class ServiceLimits(BaseModel):
    """Budgets of one server; the defaults keep a busy server under about 1 GB besides the model."""

    max_upload_mb: float = Field(default=20.0, gt=0, description="largest upload body (the encoded file)")
    max_megapixels: float = Field(default=16.0, gt=0,
                                  description="decoded pixels per image, read from the header; 16 MP is 48 MB as RGB")
    max_store_mb: float = Field(default=512.0, gt=0, description="decoded images kept for later prompts, LRU")
    max_decodes: int = Field(default=2, ge=1, description="uploads read and decoded at the same time")
    decode_wait_s: float = Field(default=10.0, gt=0,
                                 description="how long an upload waits for a decode slot (then 503)")
    max_json_kb: float = Field(default=1024.0, gt=0, description="largest prompt request body")

    @property
    def upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def json_bytes(self) -> int:
        return int(self.max_json_kb * 2**10)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1_000_000)

    @property
    def store_bytes(self) -> int:
        return int(self.max_store_mb * 2**20)
