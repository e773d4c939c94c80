"""Helpers for the UI tests (tests/test_ui_*.py and tests/security/test_ui_*.py): a served UI on a
free loopback port, gradio_client calls, raw API calls that send any payload, drawn images, a NIfTI volume
and a zip of a DICOM series built in the test."""

from __future__ import annotations

import copy
import io
import json
import socket
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

# planner, base URL, model, backend, rounds, calibrated presence thresholds (the slider's threshold unused), threshold,
# window of a DICOM / NIfTI upload ("auto": the loader's own rule)
ASK_SETTINGS = ["offline", "", "", "lite", 3, True, 0.5, "auto"]
XRAY = Path(__file__).resolve().parents[1] / "examples" / "chest_xray_pa_radiopaedia_9171.jpg"
AFFINE = np.array([[-0.9, 0, 0, 80.0], [0, -0.9, 0, 60.0], [0, 0, 3.0, -10.0], [0, 0, 0, 1]])  # (slice, row, col)


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
        for line in manifest.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row["split"] == "val":
                return DATA / "kvasir_seg" / row["image"]
    return draw_polyp(folder / "synthetic_polyp.png")


def require_real_polyp(image: Path) -> None:
    """Skip a scripted-MLLM test on the drawn stand-in: the 'polyp' presence gate finds no mask on it."""
    import pytest

    if image.name == "synthetic_polyp.png":
        pytest.skip("needs a real polyp image (shared data absent): a scripted MLLM run needs a found mask")


def chest_nifti(path: Path, size: int = 160) -> Path:
    """Four slices (blank, the repo's CC BY chest X-ray twice, blank) saved with nibabel at ``AFFINE``."""
    import nibabel as nib
    import pytest

    if not XRAY.exists():
        pytest.skip(f"{XRAY.name} not found in examples/")
    xray = np.asarray(Image.open(XRAY).convert("L").resize((size, size)))
    stack = np.stack([np.zeros_like(xray), xray, xray, np.zeros_like(xray)])  # (slice, row, col)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(stack.transpose(2, 1, 0)), AFFINE), str(path))  # (x, y, z)
    return path


def ct_series_zip(path: Path, slices: int = 3, **tags: str) -> Path:
    """A zip of one CT series: pydicom's CT_small.dcm repeated at 5 mm steps along its normal, with ``tags``."""
    import pydicom
    import pydicom.data
    from pydicom.uid import generate_uid

    source = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    series = generate_uid()
    normal = np.cross(*np.reshape([float(v) for v in source.ImageOrientationPatient], (2, 3)))
    with zipfile.ZipFile(path, "w") as archive:
        for k in range(slices):
            ds = copy.deepcopy(source)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.SeriesInstanceUID, ds.InstanceNumber = series, k + 1
            position = np.asarray(source.ImagePositionPatient, float) + 5 * k * normal
            ds.ImagePositionPatient = [float(v) for v in position]
            for key, value in tags.items():
                setattr(ds, key, value)
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            archive.writestr(f"series/{slices - k:03d}.dcm", buffer.getvalue())  # names against the order
    return path


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
    chat, box, overlay, legend, downloads, status, slider = ui_client.predict(
        {"text": text, "files": files}, api_name="/ask", **settings
    )
    return {"chat": chat, "box": box, "overlay": overlay, "legend": legend, "downloads": downloads, "status": status,
            "slider": slider}


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
