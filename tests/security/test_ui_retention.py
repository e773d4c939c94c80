"""What the UI keeps, and for how long: nothing after it stops, nothing of a cleared thread, no path.

* ``medsam3-agent ui`` as a real process: after one turn, SIGTERM (systemd, docker, kill) and
  Ctrl+C both end it with exit 0 and no file of the run left in its temp folder.
* A cleared chat (New chat) loses its checkpoints, masks, image and turn folder at once.
* The checkpoint names the image by content hash only: neither the upload's name nor any path is
  stored; downloads are ``masks.zip`` and ``result.json`` whatever the upload was called.
* The in-memory store is bounded by bytes and evicts the least recently used entries.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from ui_helpers import ask, client, draw_polyp, free_port, sample_polyp, serve_ui, texts

from agent.store import MemoryMaskStore, SqliteMaskStore
from segmenter.base import image_key
from segmenter.study_io import load_image

pytest.importorskip("gradio_client")

REPO = Path(__file__).resolve().parents[2]
PATIENT_NAME = "doe_jane_19610704"  # an upload named after the patient, as they often are


def _start_ui(tmp: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp)}  # the run's folder goes to the temp folder: this one
    env.pop("GRADIO_TEMP_DIR", None)
    with log.open("w", encoding="utf-8") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "ui", "--port", str(port), "--no-preload"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(encoding="utf-8")[-3000:]
        try:
            if httpx.get(url, timeout=10).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    process.kill()
    raise AssertionError(f"the UI did not start: {log.read_text(encoding='utf-8')[-3000:]}")


def _leftovers(tmp: Path) -> list[str]:
    """Files under ``tmp`` that belong to a UI run: its folder, images, zips, JSON, SQLite files."""
    suffixes = {".png", ".jpg", ".jpeg", ".tif", ".zip", ".json", ".sqlite", ".sqlite-wal", ".sqlite-shm"}
    found = [p for p in tmp.rglob("*") if "medsam3-ui-" in str(p) or p.suffix in suffixes]
    return sorted(str(p.relative_to(tmp)) for p in found)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl+C"])
def test_stopping_the_ui_process_leaves_no_file_of_the_run(stop, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    process, url = _start_ui(tmp, tmp_path / "ui.log")
    try:
        (root,) = tmp.glob("medsam3-ui-*")
        if stop == signal.SIGTERM:  # one whole turn first, so every kind of file exists
            upload = tmp_path / f"{PATIENT_NAME}.png"
            shutil.copyfile(sample_polyp(tmp_path), upload)
            out = ask(client(url), "find the polyps", upload)
            assert out["status"].startswith("Done"), texts(out["chat"][-1])
            assert (root / "threads.sqlite").exists()
            assert list((root / "sessions").rglob("masks.zip")) and list((root / "sessions").rglob("input.png"))
            assert any(p.is_file() for p in (root / "gradio").rglob("*"))  # the upload, Gradio's copies
        process.send_signal(stop)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 0, (tmp_path / "ui.log").read_text(encoding="utf-8")[-3000:]
    assert not root.exists()
    assert _leftovers(tmp) == []


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serve_ui(workdir=tmp_path_factory.mktemp("ui_retention")) as ui:
        yield ui


def _rows(db: Path, sql: str, *args: object) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchone()[0]


def test_new_chat_deletes_the_thread_image_masks_and_files_and_nothing_names_the_upload(served, tmp_path):
    ui = served
    upload = tmp_path / f"{PATIENT_NAME}.png"
    shutil.copyfile(sample_polyp(tmp_path), upload)
    key = image_key(load_image(upload))
    db = ui.app.files.checkpoint_db
    sessions_before = set(ui.app.files.sessions.iterdir())
    user = client(ui.url)
    out = ask(user, "find the polyps", upload)
    assert out["status"].startswith("Done"), texts(out["chat"][-1])

    # downloads are named neutrally, and nothing in them names the upload
    zip_path, json_path = out["downloads"]
    assert [Path(zip_path).name, Path(json_path).name] == ["masks.zip", "result.json"]
    with zipfile.ZipFile(zip_path) as archive:
        assert not any(PATIENT_NAME in name for name in archive.namelist())
    assert PATIENT_NAME not in Path(json_path).read_text(encoding="utf-8")
    thread = json.loads(Path(json_path).read_text(encoding="utf-8"))["thread_id"]

    # the stored thread holds the image by hash: no name, no path of the upload or of the server's folders
    stored = b"".join(p.read_bytes() for p in db.parent.glob("threads.sqlite*"))
    for text in (PATIENT_NAME, str(upload), str(tmp_path), str(ui.app.files.root)):
        assert text.encode() not in stored, text
    assert _rows(db, "SELECT count(*) FROM agent_images WHERE key = ?", key) == 1
    assert _rows(db, "SELECT count(*) FROM checkpoints WHERE thread_id = ?", thread) > 0
    (session,) = set(ui.app.files.sessions.iterdir()) - sessions_before
    assert list(session.rglob("masks.zip"))

    user.predict(api_name="/new_chat")
    assert _rows(db, "SELECT count(*) FROM agent_images WHERE key = ?", key) == 0
    assert _rows(db, "SELECT count(*) FROM agent_masks WHERE thread_id = ?", thread) == 0
    assert _rows(db, "SELECT count(*) FROM checkpoints WHERE thread_id = ?", thread) == 0
    assert not session.exists()


def test_clearing_a_chat_while_its_turn_runs_does_not_wait_and_deletes_once_the_turn_ends(served, tmp_path):
    from agent.ui.settings import UiSettings

    pool, db = served.app.pool, served.app.files.checkpoint_db
    image = load_image(draw_polyp(tmp_path / "scan.png", noise_seed=11))
    list(pool.stream(UiSettings(), "find the polyps", image, "busy"))
    key = image_key(image)
    with pool._threads.hold("busy"):  # as while a turn of the thread runs (a slow MLLM call)
        started = time.monotonic()
        assert pool.forget("busy") is False  # deferred, not waited for
        assert time.monotonic() - started < 5
        assert _rows(db, "SELECT count(*) FROM agent_images WHERE key = ?", key) == 1
    deadline = time.monotonic() + 60
    while _rows(db, "SELECT count(*) FROM agent_images WHERE key = ?", key) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _rows(db, "SELECT count(*) FROM agent_images WHERE key = ?", key) == 0
    assert _rows(db, "SELECT count(*) FROM checkpoints WHERE thread_id = 'busy'") == 0


def test_the_checkpoint_keeps_a_hash_not_the_path_and_a_follow_up_reuses_the_stored_image(segmenter, tmp_path):
    from agent import Agent

    image = draw_polyp(tmp_path / "records" / f"{PATIENT_NAME}.png")
    db = tmp_path / "threads.sqlite"
    with Agent(planner="offline", segmenter=segmenter, checkpoint_db=db) as agent:
        agent.run("find the polyps", image=str(image), thread_id="t1")
        state = agent.thread_state("t1")
        assert state["image_ref"] == f"store:{image_key(load_image(image))}"
        image.unlink()  # the follow-up needs the stored copy, not the file
        again = agent.run("find the polyps", thread_id="t1")
        assert again.image_size == (240, 320)
        agent.forget("t1")
        assert agent.thread_state("t1") == {}
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("threads.sqlite*"))
    assert PATIENT_NAME.encode() not in stored and str(tmp_path).encode() not in stored
    assert _rows(db, "SELECT count(*) FROM agent_images") == 0  # forgotten with its only thread


def test_a_one_off_run_leaves_nothing_in_the_memory_store(segmenter, tmp_path):
    from agent import Agent

    agent = Agent(planner="offline", segmenter=segmenter)
    agent.run("find the polyps", image=str(draw_polyp(tmp_path / "scan.png")))
    assert len(agent.store) == 0 and agent.store.nbytes == 0


def test_the_memory_store_is_bounded_by_bytes_and_evicts_the_least_recently_used():
    image = np.zeros((100, 100, 3), dtype=np.uint8)  # 30,000 bytes each
    store = MemoryMaskStore(max_bytes=100_000)
    for n in range(3):
        store.put_image(f"k{n}", image + n, thread_id=f"t{n}")
    assert store.get_image("k0") is not None  # k0 is now the most recently used
    store.put_image("k3", image + 3, thread_id="t3")  # 120,000 bytes: the least recent (k1) goes
    assert store.nbytes <= 100_000
    assert store.get_image("k1") is None
    assert all(store.get_image(k) is not None for k in ("k0", "k2", "k3"))
    masks = {i: np.ones((100, 100), dtype=bool) for i in range(50)}
    store.put_masks("t0", masks)
    assert store.nbytes <= 100_000
    with pytest.raises(ValueError):
        MemoryMaskStore(max_bytes=0)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_deleting_a_thread_keeps_an_image_another_thread_still_uses(kind, tmp_path):
    store = MemoryMaskStore() if kind == "memory" else SqliteMaskStore(tmp_path / "threads.sqlite")
    image = np.full((20, 30, 3), 7, dtype=np.uint8)
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:10, 5:10] = True
    for thread in ("a", "b"):
        store.put_image("shared", image, thread_id=thread)
        store.put_masks(thread, {1: mask})
    store.delete_thread("a")
    with pytest.raises(KeyError):
        store.get_mask("a", 1)
    assert store.get_mask("b", 1).sum() == 25
    assert (store.get_image("shared") == image).all()  # b still uses it
    store.delete_thread("b")
    assert store.get_image("shared") is None


def test_cache_lifetime_is_configurable_and_short_by_default(tmp_path):
    from agent.cli import build_parser
    from agent.ui import config_from_args
    from agent.ui.app import build_app

    assert config_from_args(build_parser().parse_args(["ui"])).cache_ttl == 3600
    config = config_from_args(build_parser().parse_args(["ui", "--cache-ttl", "120"]))
    config.workdir = tmp_path
    demo, app = build_app(config)
    try:
        assert demo.delete_cache == (120, 120)  # Gradio's uploads and copies: checked and dropped at the TTL
        (state,) = [b for b in demo.blocks.values() if type(b).__name__ == "State"]
        assert state.time_to_live == 120  # a chat unused for the TTL is forgotten, files and thread
    finally:
        app.shutdown()
    assert not app.files.root.exists()
