"""The UI reads only what this server received as an upload (or the operator's example images).

Probes go through the real UI on 127.0.0.1 with raw API calls, as an attacker would: a file that
exists on the server but was never uploaded, a path that does not exist, and a symlink placed
inside the upload folder that points outside it. All are refused with one message that does not
say whether the path exists; nothing is read, copied into the cache, or offered for download.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ui_helpers import ASK_SETTINGS, ask, call_raw, client, draw_polyp, file_payload, serve_ui, texts

pytest.importorskip("gradio_client")

REFUSAL = "only an image uploaded on this page can be used"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    example = draw_polyp(tmp_path_factory.mktemp("examples") / "example_polyp.png")
    with serve_ui(workdir=tmp_path_factory.mktemp("ui_inputs"), examples=[example]) as ui:
        yield ui, example


@pytest.fixture()
def outside(tmp_path) -> Path:
    """A readable PNG on the server, in a folder Gradio never received it into."""
    return draw_polyp(tmp_path / "secret_scan.png", noise_seed=7)


def _probe(url: str, path: str, text: str = "find the polyps") -> tuple[str, bool]:
    """The chat's last message, and whether files were offered for download."""
    event, data = call_raw(url, "ask", [{"text": text, "files": [file_payload(path)]}, *ASK_SETTINGS])
    assert event == "complete", (event, data)
    chat, downloads = data[0], data[4]  # (chat, box, overlay, legend, downloads, session, status)
    return texts(chat[-1]), isinstance(downloads, list) and bool(downloads)


def _cached_files(ui) -> set[str]:
    return {p.name for p in ui.app.files.gradio_cache.rglob("*") if p.is_file()}


def test_a_server_file_never_uploaded_and_a_missing_path_get_the_same_refusal(served, outside, tmp_path):
    ui, _ = served
    before = _cached_files(ui)
    existing, offered_existing = _probe(ui.url, str(outside))
    missing, offered_missing = _probe(ui.url, str(tmp_path / "no_such_scan.png"))
    assert REFUSAL in existing
    assert existing == missing  # the answer does not tell whether the path exists
    assert "secret_scan" not in existing and str(tmp_path) not in existing
    assert not offered_existing and not offered_missing  # no copy of the file offered back
    assert "secret_scan.png" not in _cached_files(ui) - before  # and none made in Gradio's cache


def test_a_symlink_in_the_upload_folder_pointing_outside_is_refused(served, outside):
    ui, _ = served
    folder = ui.app.files.gradio_cache / "planted"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "scan.png"
    os.symlink(outside, link)
    message, offered = _probe(ui.url, str(link))
    assert REFUSAL in message and not offered
    assert message == _probe(ui.url, str(folder / "gone.png"))[0]


def test_real_uploads_and_the_shipped_examples_are_accepted(served, outside):
    """The controls: both are read (the question is left out, so the answer is the prompt for one, not a refusal)."""
    ui, example = served
    uploaded = ask(client(ui.url), "", outside)  # gradio_client uploads it first
    assert "type a question" in texts(uploaded["chat"][-1])
    message, _ = _probe(ui.url, str(example), text="")  # an example the operator gave with --examples
    assert "type a question" in message and REFUSAL not in message
