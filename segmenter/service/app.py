"""The segmenter HTTP service (FastAPI): upload an image once, then send prompts against its id.

Endpoints (all but ``/health`` need ``Authorization: Bearer <token>`` when the server has a token):

- ``GET  /health``                        -> ``{"status": "ok"}`` (liveness, no details)
- ``GET  /v1/info``                       -> backend, concepts, device, upload limit, backend details
- ``POST /v1/images``                     body: the image file's bytes (PNG, JPEG, TIFF, ...) -> image id and size
- ``POST /v1/images/{image_id}/segment``  body: ``{"prompts": [Prompt, ...]}`` -> results with COCO RLE masks

Uploads above the size limit get 413 before they are read in full; a wrong or missing token 401.
"""

from __future__ import annotations

import hmac
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from segmenter.base import SegmenterBackend, image_key
from segmenter.image_io import ImageError, load_image
from segmenter.service.wire import ImageInfo, SegmentRequest, SegmentResponse, ServerInfo, WireResult
from segmenter.types import Prompt, SegmentationResult

# module level, so FastAPI can resolve the annotation (this module uses postponed annotations)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


class ImageStore:
    """Uploaded images by id, least recently used dropped first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, image: np.ndarray) -> str:
        key = image_key(image)
        with self._lock:
            self._items[key] = image
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return key

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            image = self._items.get(key)
            if image is not None:
                self._items.move_to_end(key)
            return image


def fit_prompt(prompt: Prompt, width: int, height: int) -> Prompt:
    """What the ``Segmenter`` facade does before a backend sees a prompt: clip boxes, check points."""
    for p in prompt.points:
        if not (0 <= p.x < width and 0 <= p.y < height):
            raise ValueError(f"point ({p.x}, {p.y}) lies outside the {width}x{height} image")
    return prompt.model_copy(update={"boxes": [b.clipped(width, height) for b in prompt.boxes]})


def create_app(
    backend: SegmenterBackend,
    *,
    token: str | None = None,
    max_upload_mb: float = 20.0,
    max_images: int = 32,
) -> FastAPI:
    app = FastAPI(title="MedSAM3 Agent segmenter", version="1")
    app.state.backend = backend
    app.state.images = ImageStore(max_images)
    backend_lock = threading.Lock()  # backends keep one current image: one request at a time
    max_bytes = int(max_upload_mb * 1024 * 1024)
    def authorize(credentials: Credentials) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/info", dependencies=[Depends(authorize)])
    def info() -> ServerInfo:
        details = backend.info()
        return ServerInfo(
            backend=str(details.get("backend", backend.name)),
            concepts=backend.concepts(),
            device=str(details.get("device", "unknown")),
            max_upload_mb=max_upload_mb,
            details={k: v for k, v in details.items() if k not in ("concepts",)},
        )

    @app.post("/v1/images", dependencies=[Depends(authorize)])
    async def upload(request: Request) -> ImageInfo:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise HTTPException(413, f"upload of {int(declared)} bytes is above the server's limit of {max_upload_mb} MB")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise HTTPException(413, f"upload is above the server's limit of {max_upload_mb} MB")
        try:
            image = await run_in_threadpool(load_image, bytes(body))
        except ImageError as exc:
            raise HTTPException(400, str(exc)) from None
        key = app.state.images.put(image)
        return ImageInfo(image_id=key, height=image.shape[0], width=image.shape[1])

    @app.post("/v1/images/{image_id}/segment", dependencies=[Depends(authorize)])
    def segment(image_id: str, request: SegmentRequest) -> SegmentResponse:
        image = app.state.images.get(image_id)
        if image is None:
            raise HTTPException(404, f"unknown image id {image_id!r}: upload the image first (POST /v1/images)")
        h, w = image.shape[:2]
        try:
            prompts = [fit_prompt(p, w, h) for p in request.prompts]
            with backend_lock:
                backend.set_image(image)
                results = run_prompts(backend, prompts)
        except (ValueError, ImageError) as exc:
            raise HTTPException(422, str(exc)) from None
        except RuntimeError as exc:  # e.g. CUDA out of memory: say so rather than a bare 500
            raise HTTPException(500, f"segmenter failed: {exc}") from None
        return SegmentResponse(image_id=image_id, results=[WireResult.from_result(r) for r in results])

    return app


def run_prompts(backend: SegmenterBackend, prompts: list[Prompt]) -> list[SegmentationResult]:
    """Batched where the backend can (SAM 3 decodes prompts together), one by one otherwise."""
    many = getattr(backend, "segment_many", None)
    if callable(many):
        return many(prompts)
    return [backend.segment(p) for p in prompts]


@contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread (port 0: a free one); yields its base URL, stops it on exit."""
    import socket
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"segmenter server on {host} did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
