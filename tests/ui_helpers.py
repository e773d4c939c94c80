"""Helpers for the UI tests (tests/test_ui_app.py and tests/security/test_ui_*.py): a served UI on a
free loopback port, gradio_client calls, raw API calls that send any payload, and drawn images."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

ASK_SETTINGS = ["offline", "", "", "lite", 3, 0.5]  # planner, base URL, model, backend, rounds, threshold


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def draw_polyp(path: Path, *, noise_seed: int | None = None) -> Path:
    """A 320x240 'polyp' (pink disc on red); ``noise_seed`` adds faint noise so the image's hash is unique."""
    h, w = 240, 320
    yy, xx = np.mgrid[:h, :w]
    image = np.stack([np.full((h, w), 150), np.full((h, w), 60), np.full((h, w), 50)], axis=-1).astype(np.int16)
    image[(xx - 160) ** 2 + (yy - 120) ** 2 < 45**2] = (225, 140, 130)
    if noise_seed is not None:
        image += np.random.default_rng(noise_seed).integers(-3, 4, image.shape, dtype=np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path)
    return path


def sample_polyp(folder: Path) -> Path:
    """A Kvasir val image where the shared data is present (the agent finds masks on it), else a drawn one."""
    from conftest import DATA

    manifest = DATA / "kvasir_seg" / "manifest.jsonl"
    if manifest.exists():
        for line in manifest.read_text().splitlines():
            row = json.loads(line)
            if row["split"] == "val":
                return DATA / "kvasir_seg" / row["image"]
    return draw_polyp(folder / "synthetic_polyp.png")


@contextmanager
def serve_ui(**config: Any) -> Iterator[Any]:
    """The real UI (offline planner + MedSAM3-Lite) on a free loopback port; yields the RunningUi."""
    from agent.ui.app import UiConfig, launch_app

    ui = launch_app(UiConfig(port=free_port(), **config), block=False)
    try:
        yield ui
    finally:
        ui.close()


def client(url: str, **options: Any):
    import gradio_client

    # generous HTTP timeouts: on a busy 2-core machine the server can be slow to answer, never wrong
    return gradio_client.Client(url, verbose=False, analytics_enabled=False, httpx_kwargs={"timeout": 300}, **options)


def ask(ui_client, text: str, image: Path | None = None, **settings: Any) -> dict:
    import gradio_client

    files = [gradio_client.handle_file(str(image))] if image else []
    chat, box, overlay, legend, downloads, status = ui_client.predict(
        {"text": text, "files": files}, api_name="/ask", **settings
    )
    return {"chat": chat, "box": box, "overlay": overlay, "legend": legend, "downloads": downloads, "status": status}


def texts(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return " ".join(part.get("text", "") for part in content if part.get("type") == "text")


def last_turn(chat: list[dict]) -> list[dict]:
    """The last turn's messages: from the last user message on."""
    last_user = max(i for i, m in enumerate(chat) if m["role"] == "user")
    return chat[last_user:]


def call_raw(url: str, api_name: str, data: list, **http: Any) -> tuple[str, Any]:
    """POST any ``data`` to ``/gradio_api/call/<api_name>`` (as an attacker would, no client-side upload) and
    read the event stream; returns (last event name, its data). Raises for an HTTP error status."""
    with httpx.Client(base_url=url, timeout=600, **http) as web:
        started = web.post(f"gradio_api/call/{api_name}", json={"data": data})
        started.raise_for_status()
        event_id = started.json()["event_id"]
        last: tuple[str, Any] = ("", None)
        with web.stream("GET", f"gradio_api/call/{api_name}/{event_id}") as stream:
            event = ""
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.removeprefix("event:").strip()
                elif line.startswith("data:") and event != "heartbeat":
                    last = (event, json.loads(line.removeprefix("data:").strip()))
                    if event in ("complete", "error"):
                        break
        return last


def file_payload(path: str) -> dict:
    """A file reference as the API takes it: only a path, for a file the server never received."""
    return {"path": path, "meta": {"_type": "gradio.FileData"}}
