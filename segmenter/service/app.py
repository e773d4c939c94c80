"""The segmenter HTTP service (FastAPI): upload an image once, then send prompts against its id.

Endpoints (all but ``/health`` need ``Authorization: Bearer <token>`` when the server has a token):

- ``GET  /health``                        -> ``{"status": "ok"}`` (liveness, no details)
- ``GET  /v1/info``                       -> backend, concepts, device, limits, backend details
- ``POST /v1/images``                     body: the image file's bytes (PNG, JPEG, TIFF, ...), Content-Type
                                             ``application/octet-stream`` or ``image/*`` -> image id and size
- ``POST /v1/images/{image_id}/segment``  body: ``{"prompts": [Prompt, ...]}`` (``application/json``)
                                             -> results with COCO RLE masks

Refusals are short and never echo the request: 400 bad Host (tokenless server) or unreadable image,
401 wrong token, 413 body or image above the limits, 415 wrong Content-Type, 422 invalid prompt,
503 every decode slot busy. ``guard.RequestGuard`` checks Host, type and size before any body is read.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from segmenter.base import EmbeddingCache, SegmenterBackend, image_key
from segmenter.image_io import ImageError, ImageTooLarge
from segmenter.service.guard import RequestGuard
from segmenter.service.limits import ServiceLimits
from segmenter.service.wire import ImageInfo, SegmentRequest, SegmentResponse, ServerInfo, WireResult
from segmenter.study_io import load_image
from segmenter.types import Prompt, SegmentationResult

# module level, so FastAPI can resolve the annotation (this module uses postponed annotations)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]
log = logging.getLogger(__name__)


class ImageStore(EmbeddingCache[np.ndarray]):
    """Uploaded images by id, least recently used dropped first once their bytes pass the budget."""

    def add(self, image: np.ndarray) -> str:
        if image.nbytes > self.max_bytes:
            raise ImageTooLarge(f"the decoded image ({image.nbytes / 2**20:.0f} MB) is larger than the server's "
                                f"image store ({self.max_bytes / 2**20:.0f} MB)")
        key = image_key(image)
        self.put(key, image)
        return key


def fit_prompt(prompt: Prompt, width: int, height: int) -> Prompt:
    """What the ``Segmenter`` facade does before a backend sees a prompt: clip boxes, check points."""
    for p in prompt.points:
        if not (0 <= p.x < width and 0 <= p.y < height):
            raise ValueError(f"point ({p.x}, {p.y}) lies outside the {width}x{height} image")
    return prompt.model_copy(update={"boxes": [b.clipped(width, height) for b in prompt.boxes]})


def short(text: str, limit: int = 300) -> str:
    """An error text fit to send: bounded, and encodable (a lone surrogate would break the JSON response)."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validation_detail(errors: list[dict]) -> str:
    """pydantic's errors as one short line: where and what, never the offending input."""
    parts = []
    for error in errors[:3]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        what = str(error.get("msg", "invalid value"))
        parts.append(f"{short(where, 80)}: {short(what, 160)}" if where else short(what, 160))
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


@dataclass
class Service:
    """What the endpoints share (``app.state.service``): the model, its budgets, token and uploaded images."""

    backend: SegmenterBackend
    limits: ServiceLimits
    token: str | None
    images: ImageStore
    decode_slots: asyncio.Semaphore  # uploads read and decoded at once
    backend_lock: threading.Lock = field(default_factory=threading.Lock)  # backends keep one current image


def current_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


# module level, so FastAPI can resolve the annotation (this module uses postponed annotations)
CurrentService = Annotated[Service, Depends(current_service)]


def authorize(service: CurrentService, credentials: Credentials) -> None:
    if service.token is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), service.token.encode()):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse({"detail": validation_detail(list(errors))}, status_code=422)


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("segmenter request failed")  # the details stay in the server's log
    return JSONResponse({"detail": f"internal error in the segmenter ({exc.__class__.__name__})"}, status_code=500)


router = APIRouter()
AUTHORIZED = [Depends(authorize)]


@router.get("/health")
def health() -> dict:
    return {"status": "ok"}


@router.get("/v1/info", dependencies=AUTHORIZED)
def info(service: CurrentService) -> ServerInfo:
    backend, limits = service.backend, service.limits
    details = backend.info()
    return ServerInfo(
        backend=str(details.get("backend", backend.name)),
        concepts=backend.concepts(),
        device=str(details.get("device", "unknown")),
        max_upload_mb=limits.max_upload_mb,
        max_megapixels=limits.max_megapixels,
        details={k: v for k, v in details.items() if k not in ("concepts",)},
    )


@router.post("/v1/images", dependencies=AUTHORIZED)
async def upload(request: Request, service: CurrentService) -> ImageInfo:
    # the slot covers reading and decoding: at most max_decodes bodies and decoded images in flight
    try:
        await asyncio.wait_for(service.decode_slots.acquire(), service.limits.decode_wait_s)
    except asyncio.TimeoutError:
        raise HTTPException(503, "the server is busy decoding other uploads; retry shortly",
                            headers={"Retry-After": "5"}) from None
    try:
        body = await request.body()  # RequestGuard stops it at the upload limit
        image = await run_in_threadpool(load_image, body, service.limits.max_pixels)
        key = service.images.add(image)
    except ImageTooLarge as exc:
        raise HTTPException(413, short(str(exc))) from None
    except ImageError as exc:
        raise HTTPException(400, short(str(exc))) from None
    finally:
        service.decode_slots.release()
    return ImageInfo(image_id=key, height=image.shape[0], width=image.shape[1])


@router.post("/v1/images/{image_id}/segment", dependencies=AUTHORIZED)
def segment(image_id: str, request: SegmentRequest, service: CurrentService) -> SegmentResponse:
    image = service.images.get(image_id)
    if image is None:  # the id is not echoed: it is the client's input
        raise HTTPException(404, "unknown image id: upload the image first (POST /v1/images)")
    h, w = image.shape[:2]
    try:
        prompts = [fit_prompt(p, w, h) for p in request.prompts]
        with service.backend_lock:
            service.backend.set_image(image)
            results = run_prompts(service.backend, prompts)
    except (ValueError, ImageError) as exc:
        raise HTTPException(422, short(str(exc))) from None
    except RuntimeError as exc:  # e.g. CUDA out of memory: say so rather than a bare 500
        raise HTTPException(500, short(f"segmenter failed: {exc}")) from None
    return SegmentResponse(image_id=image_id, results=[WireResult.from_result(r) for r in results])


def create_app(
    backend: SegmenterBackend,
    *,
    token: str | None = None,
    limits: ServiceLimits | None = None,
    check_host: bool | None = None,
) -> FastAPI:
    """The service around ``backend``. ``check_host`` (default: when there is no token) accepts only
    loopback Host headers; turn it off only for a tokenless server deliberately exposed (``--insecure``)."""
    limits = limits or ServiceLimits()
    # no /docs, /redoc or /openapi.json: a private API, and the docs page would load scripts from a CDN
    app = FastAPI(title="MedSAM3 Agent segmenter", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = Service(backend=backend, limits=limits, token=token, images=ImageStore(limits.store_bytes),
                                decode_slots=asyncio.Semaphore(limits.max_decodes))
    app.state.images = app.state.service.images  # read by the memory tests
    app.add_middleware(RequestGuard, limits=limits, check_host=token is None if check_host is None else check_host)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(Exception, unexpected)
    app.include_router(router)
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
