"""What a request to the segmenter service may be, checked before any endpoint reads it.

``RequestGuard`` (pure ASGI middleware) refuses, before the body is read:

- a Host header other than 127.0.0.1 / localhost / [::1] (with the served port or none) when the
  server has no token: a web page in the user's browser cannot reach it by DNS rebinding (400);
- a wrong or missing Content-Type: uploads take ``application/octet-stream`` or ``image/*``,
  prompts ``application/json``. Neither is a CORS "simple" type, so a browser must ask first (415);
- a body above the endpoint's limit (``limits.ServiceLimits``), by Content-Length and by counting
  what arrives (413).
"""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from segmenter.service.limits import ServiceLimits

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_SEGMENT_PATH = re.compile(r"^/v1/images/[^/]+/segment$")


def loopback_host(host: str | None, port: int | None) -> bool:
    """Whether a Host header names this machine's loopback, with the served port or without one."""
    if not host:
        return False
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host.partition("]")
        name += bracket
    else:
        name, _, rest = host.partition(":")
        rest = ":" + rest if rest else ""
    if name not in LOOPBACK_NAMES:
        return False
    return rest == "" or (port is not None and rest == f":{port}")


def _rule(method: str, path: str, limits: ServiceLimits) -> tuple[int, tuple[str, ...] | None, str]:
    """(body limit in bytes, accepted content types or None for any, limit as people read it)."""
    if method == "POST" and path == "/v1/images":
        return limits.upload_bytes, ("application/octet-stream", "image/"), f"{limits.max_upload_mb:g} MB"
    if method == "POST" and _SEGMENT_PATH.match(path):
        return limits.json_bytes, ("application/json",), f"{limits.max_json_kb:g} kB"
    return 0, None, "0 bytes (this endpoint takes no body)"


def _type_ok(content_type: str | None, accepted: tuple[str, ...]) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return any(media == a or (a.endswith("/") and media.startswith(a) and len(media) > len(a)) for a in accepted)


class RequestGuard:
    """ASGI middleware: Host, Content-Type and body-size checks (see the module docstring)."""

    def __init__(self, app: ASGIApp, limits: ServiceLimits, check_host: bool) -> None:
        self.app = app
        self.limits = limits
        self.check_host = check_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._check_headers(scope)
        if refusal is not None:
            await _refuse(scope, receive, send, *refusal)
            return
        limit, _, readable = _rule(scope["method"], scope["path"], self.limits)
        received = 0
        started = False

        async def counted() -> Message:  # a body without Content-Length (chunked) is counted as it arrives
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body is above this endpoint's limit of {readable}")
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except HTTPException as exc:  # raised while reading the body outside an endpoint's own handling
            if started or exc.status_code != 413:
                raise
            await _refuse(scope, receive, send, 413, str(exc.detail))

    def _check_headers(self, scope: Scope) -> tuple[int, str] | None:
        """(status, message) when Host, Content-Type or Content-Length alone already refuse the request."""
        headers = Headers(scope=scope)
        server = scope.get("server")
        if self.check_host and not loopback_host(headers.get("host"), server[1] if server else None):
            return 400, ("Host header not accepted: this server has no token and answers only to 127.0.0.1, "
                         "localhost or [::1]")
        limit, accepted, readable = _rule(scope["method"], scope["path"], self.limits)
        if accepted is not None and not _type_ok(headers.get("content-type"), accepted):
            wanted = " or ".join(a + "*" if a.endswith("/") else a for a in accepted)
            return 415, f"Content-Type must be {wanted}"
        declared = headers.get("content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
            return 413, f"request body is above this endpoint's limit of {readable}"
        return None


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
