"""The ``remote`` backend: the segmenter interface, answered by a ``serve-segmenter`` server over HTTP."""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image

from segmenter.base import SegmenterBackend, image_key
from segmenter.service.wire import ImageInfo, SegmentRequest, SegmentResponse, ServerInfo
from segmenter.types import Prompt, SegmentationResult

URL_ENV = "MEDSAM3_SEGMENTER_URL"
TOKEN_ENV = "MEDSAM3_SEGMENTER_TOKEN"


class RemoteError(RuntimeError):
    """The segmenter server could not be reached or refused the request; the message says which."""


def encode_png(image: np.ndarray) -> bytes:
    """Lossless, so the server sees exactly these pixels."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class RemoteBackend(SegmenterBackend):
    name = "remote"

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 120.0) -> None:
        import httpx

        url = url or os.environ.get(URL_ENV)
        if not url:
            raise ValueError(f"the remote backend needs the server's URL: pass url=... or set {URL_ENV}")
        self.url = url.rstrip("/")
        token = (token if token is not None else os.environ.get(TOKEN_ENV, "")).strip()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._info = ServerInfo.model_validate(self._request("GET", "/v1/info"))
        self._image: np.ndarray | None = None
        self._image_id: str | None = None
        self._uploaded: set[str] = set()
        self._encode_count = 0  # uploads, the remote counterpart of encoder runs

    # --- HTTP --------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RemoteError(f"segmenter server at {self.url} unreachable ({exc.__class__.__name__}: {exc})") from exc
        if response.status_code == 200:
            return response.json()
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        if response.status_code == 401:
            raise RemoteError(f"segmenter server at {self.url} refused the token (401): {detail}; "
                              f"pass token=... or set {TOKEN_ENV}")
        if response.status_code == 413:
            raise RemoteError(f"segmenter server at {self.url} refused the request as too large (413): {detail}")
        if response.status_code == 404:
            raise LookupError(str(detail))
        if response.status_code in (400, 422):
            raise ValueError(f"segmenter server rejected the request: {detail}")
        raise RemoteError(f"segmenter server at {self.url} answered {response.status_code}: {detail}")

    def close(self) -> None:
        self._http.close()

    # --- interface -----------------------------------------------------------------
    def set_image(self, image: np.ndarray) -> str:
        key = image_key(image)
        self._image, self._image_id = image, key
        if key not in self._uploaded:
            self._upload(image, key)
        return key

    def _upload(self, image: np.ndarray, key: str) -> None:
        body = encode_png(image)
        info = ImageInfo.model_validate(
            self._request("POST", "/v1/images", content=body, headers={"Content-Type": "image/png"})
        )
        if info.image_id != key:
            raise RemoteError(f"server decoded the upload differently (id {info.image_id}, expected {key})")
        self._uploaded.add(key)
        self._encode_count += 1

    def segment(self, prompt: Prompt) -> SegmentationResult:
        return self.segment_many([prompt])[0]

    def segment_many(self, prompts: list[Prompt]) -> list[SegmentationResult]:
        if self._image is None or self._image_id is None:
            raise RuntimeError("no image set: call set_image(image) first")
        body = SegmentRequest(prompts=prompts).model_dump(mode="json", exclude_defaults=True)
        path = f"/v1/images/{self._image_id}/segment"
        try:
            data = self._request("POST", path, json=body)
        except LookupError:  # the server restarted or dropped the image: upload again, once
            self._uploaded.discard(self._image_id)
            self._upload(self._image, self._image_id)
            data = self._request("POST", path, json=body)
        return [r.to_result() for r in SegmentResponse.model_validate(data).results]

    def concepts(self) -> list[str]:
        return list(self._info.concepts)

    def info(self) -> dict[str, Any]:
        return {**self._info.details, "backend": f"remote:{self._info.backend}", "concepts": self.concepts(),
                "device": self._info.device, "url": self.url}
