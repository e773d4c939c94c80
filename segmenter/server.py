"""`medsam3-agent serve-segmenter --backend sam3|lite --port N`: the segmenter over HTTP.

The agent then uses it with the ``remote`` backend (``MEDSAM3_SEGMENTER_URL=http://host:N``), so the
model runs on a GPU host and the agent anywhere.
"""

from __future__ import annotations

import argparse
import os

TOKEN_ENV = "MEDSAM3_SEGMENTER_TOKEN"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["lite", "sam3"], default="lite", help="model to serve (default lite)")
    parser.add_argument("--port", type=int, required=True, help="TCP port (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--token", default=None, help=f"require 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV})")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest image upload accepted (default 20)")
    parser.add_argument("--max-images", type=int, default=32, help="uploaded images kept in memory (default 32)")
    lite = parser.add_argument_group("lite backend")
    lite.add_argument("--weights", default=None, help="MedSAM3-Lite weights (default: the shipped ones)")
    sam3 = parser.add_argument_group("sam3 backend")
    sam3.add_argument("--config", default=None, help="SAM 3 settings file (YAML/JSON: model, lora, device, dtype, postprocess)")
    sam3.add_argument("--model", default=None, help="transformers SAM 3 folder or hub id (overrides the file)")
    sam3.add_argument("--lora", default=None, help="MedSAM3 LoRA file in the native sam3 format")
    sam3.add_argument("--lora-rank", type=int, default=None, help="LoRA rank (MedSAM3 v1: 16)")
    sam3.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (MedSAM3 v1: 32)")
    sam3.add_argument("--device", default=None, help="auto (default), cuda, cuda:N or cpu")
    sam3.add_argument("--dtype", default=None, choices=["auto", "bf16", "fp16", "fp32"])


def build(args: argparse.Namespace):
    from segmenter.base import build_backend

    if args.backend == "lite":
        return build_backend("lite", weights=args.weights)
    return build_backend(
        "sam3", model=args.model, config=args.config, lora=args.lora, lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha, device=args.device, dtype=args.dtype,
    )


def main(args: argparse.Namespace) -> int:
    import socket

    import uvicorn

    from segmenter.service.app import create_app

    if args.max_upload_mb <= 0:
        raise ValueError("--max-upload-mb must be positive")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        print(f"warning: serving on {args.host} without a token; anyone who can reach it may use it")
    backend = build(args)
    app = create_app(backend, token=token, max_upload_mb=args.max_upload_mb, max_images=args.max_images)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        raise RuntimeError(f"cannot listen on {args.host}:{args.port} ({exc.strerror})") from None
    sock.listen(128)  # listen before announcing: clients that connect early wait in the backlog
    port = sock.getsockname()[1]
    info = backend.info()
    print(f"serving {info.get('backend')} on {info.get('device', 'cpu')} at http://{args.host}:{port}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
    return 0
