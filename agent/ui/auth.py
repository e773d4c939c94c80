"""Who may use the UI: USER:PASS pairs from --auth, $MEDSAM3_UI_AUTH or --auth-file, and the bind rule.

A UI that other machines can reach shows patients' images to whoever connects, so binding a
non-loopback address needs credentials, or an explicit ``--insecure`` when another layer (a
VPN, a reverse proxy with its own login) protects it. Error messages never repeat a credential.
A loopback UI without a login answers only requests addressed to a loopback name
(``LoopbackHostOnly``): a web page cannot reach it by pointing a domain of its own at 127.0.0.1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.ui.settings import is_loopback

AUTH_ENV = "MEDSAM3_UI_AUTH"


def parse_credential(text: str, where: str) -> tuple[str, str]:
    user, sep, password = text.strip().partition(":")
    if not sep or not user.strip() or not password:
        raise ValueError(f"{where}: expected USER:PASS (a user name, a colon, a password)")
    return user.strip(), password


def load_credentials(flags: list[str] | None = None, file: Path | None = None,
                     env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Every USER:PASS given: ``--auth`` values, ``$MEDSAM3_UI_AUTH`` (one per line), ``--auth-file`` lines."""
    env = os.environ if env is None else env
    pairs = [parse_credential(flag, "--auth") for flag in flags or []]
    for n, line in enumerate((env.get(AUTH_ENV) or "").splitlines(), start=1):
        if line.strip():
            pairs.append(parse_credential(line, f"${AUTH_ENV} line {n}"))
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--auth-file {file}: cannot read it ({exc.__class__.__name__})") from None
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                pairs.append(parse_credential(line, f"--auth-file line {n}"))
        if not pairs:
            raise ValueError(f"--auth-file {file}: no USER:PASS line in it")
    return pairs


def check_exposure(host: str, has_auth: bool, insecure: bool) -> None:
    """Refuse a non-loopback bind without credentials unless ``insecure`` says another layer protects it."""
    if is_loopback(host) or has_auth or insecure:
        return
    raise ValueError(
        f"refusing to serve the UI on {host} without authentication: anyone who can reach it could upload "
        f"images and read the results. Give --auth-file PATH (lines USER:PASS) or ${AUTH_ENV}=USER:PASS, "
        "or --insecure if a VPN or a reverse proxy with its own login protects it."
    )


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def host_name(header: str) -> str:
    """The name in a Host header, without its port: ``[::1]:7860`` -> ``[::1]``."""
    header = header.strip().lower()
    return header.partition("]")[0] + "]" if header.startswith("[") else header.partition(":")[0]


class LoopbackHostOnly:
    """ASGI middleware: refuse (400) a request whose Host header is not a loopback name (DNS rebinding)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or [])
            if host_name(headers.get(b"host", b"").decode("latin-1")) not in LOOPBACK_NAMES:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = b"Host header not accepted: this UI answers only to 127.0.0.1, localhost and [::1]"
                reply_headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 400, "headers": reply_headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
