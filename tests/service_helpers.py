"""Shared by the segmenter-service tests: the CLI server as a user starts it, and images drawn for them."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np

# generous: a busy shared CPU may take a while to encode an image, which must slow the tests, not fail them
http = httpx.Client(timeout=300)


@contextmanager
def serve_segmenter_cli(*args: str, env: dict[str, str] | None = None,
                        timeout: float = 300) -> Iterator[tuple[subprocess.Popen, str]]:
    """`medsam3-agent serve-segmenter --backend lite --port 0 ARGS` on 127.0.0.1; yields (process, base URL)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, "-m", "agent.cli", "serve-segmenter", "--backend", "lite", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving"):
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(timeout), "server did not start"
        banner = next((x for x in lines if x.startswith("serving")), None)
        assert banner is not None, "".join(lines)
        url = banner.split(" at ")[-1].strip()
        assert url.startswith("http://127.0.0.1:"), banner
        yield proc, url
    finally:
        proc.terminate()
        proc.wait(30)


def disc_image(h: int = 180, w: int = 240, seed: int = 1) -> np.ndarray:
    """A dark textured frame with a bright disc: something for a box or a click to find."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = (rng.random((h, w, 3)) * 40).astype(np.uint8)
    img[(yy - h // 2) ** 2 + (xx - w * 11 // 24) ** 2 < (h // 4) ** 2] = np.array([220, 150, 140], dtype=np.uint8)
    return img


def blank_png(width: int, height: int, colour_type: int = 0) -> bytes:
    """A valid all-black 8-bit PNG written row by row: tiny on disk (8000x8000 grey: ~62 kB), huge decoded."""
    channels = {0: 1, 2: 3}[colour_type]
    packer = zlib.compressobj(9)
    row = b"\0" * (1 + width * channels)  # filter byte + pixels
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
