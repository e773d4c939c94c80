"""`medsam3-agent serve-segmenter --backend sam3|lite --port N`: the segmenter over HTTP.

The agent then uses it with the ``remote`` backend (``MEDSAM3_SEGMENTER_URL=http://host:N``), so the
model runs on a GPU host and the agent anywhere.

The bearer token comes from ``$MEDSAM3_SEGMENTER_TOKEN`` or ``--token-file``, never from the command
line (every user of the machine can read a process's arguments). Listening beyond this machine
without a token is refused unless ``--insecure`` says so explicitly.

Only ``main`` imports the [serve] extra (fastapi, uvicorn), before anything else: ``--help`` works
without it, and a missing extra is one line before any model loads.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from segmenter.service.limits import ServiceLimits  # pydantic only: the defaults shown in --help

if TYPE_CHECKING:
    from segmenter.base import SegmenterBackend

TOKEN_ENV = "MEDSAM3_SEGMENTER_TOKEN"
MIN_TOKEN_CHARS = 16
_DEFAULTS = ServiceLimits()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["lite", "sam3"], default="lite", help="model to serve (default lite)")
    parser.add_argument("--port", type=int, required=True, help="TCP port (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--token-file", type=Path, default=None,
                        help=f"file holding the bearer token clients must send (default: ${TOKEN_ENV}); "
                             f"at least {MIN_TOKEN_CHARS} characters")
    parser.add_argument("--token", default=None, help=argparse.SUPPRESS)  # refused with a pointer, see read_token
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback --host without a token (anyone who can reach it may use it)")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-upload-mb", type=float, default=_DEFAULTS.max_upload_mb,
                        help=f"largest image upload accepted (default {_DEFAULTS.max_upload_mb:g})")
    limits.add_argument("--max-megapixels", type=float, default=_DEFAULTS.max_megapixels,
                        help=f"largest decoded image, checked from its header (default {_DEFAULTS.max_megapixels:g}:"
                             " 48 MB as RGB)")
    limits.add_argument("--max-store-mb", type=float, default=_DEFAULTS.max_store_mb,
                        help=f"memory for uploaded images kept for later prompts, least recently used dropped "
                             f"first (default {_DEFAULTS.max_store_mb:g})")
    limits.add_argument("--max-decodes", type=int, default=_DEFAULTS.max_decodes,
                        help=f"uploads read and decoded at once; others wait, then get 503 "
                             f"(default {_DEFAULTS.max_decodes})")
    lite = parser.add_argument_group("lite backend")
    lite.add_argument("--weights", default=None, help="MedSAM3-Lite weights (default: the shipped ones)")
    sam3 = parser.add_argument_group("sam3 backend")
    sam3.add_argument("--config", default=None,
                      help="SAM 3 settings file (YAML/JSON: model, lora, device, dtype, postprocess)")
    sam3.add_argument("--model", default=None, help="transformers SAM 3 folder or hub id (overrides the file)")
    sam3.add_argument("--lora", default=None, help="MedSAM3 LoRA file in the native sam3 format")
    sam3.add_argument("--lora-rank", type=int, default=None, help="LoRA rank (MedSAM3 v1: 16)")
    sam3.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (MedSAM3 v1: 32)")
    sam3.add_argument("--device", default=None, help="auto (default), cuda, cuda:N or cpu")
    sam3.add_argument("--dtype", default=None, choices=["auto", "bf16", "fp16", "fp32"])


def build(args: argparse.Namespace) -> SegmenterBackend:
    from segmenter.backends import build_backend

    if args.backend == "lite":
        return build_backend("lite", weights=args.weights)
    return build_backend(
        "sam3", model=args.model, config=args.config, lora=args.lora, lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha, device=args.device, dtype=args.dtype,
    )


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or the name localhost: reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


def read_token(args: argparse.Namespace) -> str | None:
    """The token from --token-file, else $MEDSAM3_SEGMENTER_TOKEN; None when neither is given."""
    if args.token is not None:
        raise ValueError(f"--token is not accepted: command-line arguments are visible to every user of this "
                         f"machine (ps). Put the token in ${TOKEN_ENV} or in a file passed with --token-file")
    if args.token_file is not None:
        path = args.token_file
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--token-file {path}: cannot read it ({exc.__class__.__name__})") from None
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            print(f"warning: --token-file {path} is readable by other users; chmod 600 it")
        source = f"--token-file {path}"
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        source = f"${TOKEN_ENV}"
        if not token:
            return None
    if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or " " in token:
        raise ValueError(f"the token from {source} must be at least {MIN_TOKEN_CHARS} printable characters without "
                         "spaces (e.g. `openssl rand -hex 16`)")
    return token


def service_limits(args: argparse.Namespace) -> ServiceLimits:
    from pydantic import ValidationError

    try:
        return ServiceLimits(max_upload_mb=args.max_upload_mb, max_megapixels=args.max_megapixels,
                             max_store_mb=args.max_store_mb, max_decodes=args.max_decodes)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ValueError(f"--{str(error['loc'][0]).replace('_', '-')}: {error['msg']}") from None


def main(args: argparse.Namespace) -> int:
    import socket

    import uvicorn

    from segmenter.service.app import create_app

    limits = service_limits(args)
    token = read_token(args)
    loopback = is_loopback(args.host)
    if token is None and not loopback:
        if not args.insecure:
            raise ValueError(f"refusing to serve on {args.host} without a token: anyone who can reach it could send "
                             f"images and read masks. Set ${TOKEN_ENV} or pass --token-file (and put TLS in front, "
                             f"see docs/security.md), or pass --insecure if this network is yours alone")
        print(f"warning: serving on {args.host} without a token (--insecure); anyone who can reach it may use it")
    backend = build(args)
    # a tokenless loopback server answers only to loopback Host names (DNS rebinding); --insecure turns that off
    app = create_app(backend, token=token, limits=limits, check_host=token is None and loopback)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"cannot listen on {args.host}:{args.port} ({exc.strerror})") from None
    sock.listen(128)  # listen before announcing: clients that connect early wait in the backlog
    port = sock.getsockname()[1]
    info = backend.info()
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {info.get('backend')} on {info.get('device', 'cpu')} at http://{shown}:{port}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
    return 0
