"""The chat UI served for real: driven through `gradio_client`, and in headless Chromium via Playwright.

One server (offline planner + MedSAM3-Lite, the real Agent) serves every test here. The browser
test saves its screenshot to tests/artifacts/ (git-ignored: it may show a shared-data image).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from ui_helpers import ask as _ask
from ui_helpers import client as _client
from ui_helpers import free_port as _free_port
from ui_helpers import last_turn as _turn
from ui_helpers import require_real_polyp, sample_polyp
from ui_helpers import texts as _texts

gradio_client = pytest.importorskip("gradio_client")

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
SECRET = "sk-test-ui-secret-never-shown"
MAX_UPLOAD_MB = 2.0
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def test_image(tmp_path_factory) -> Path:
    """A Kvasir val image where the shared data is present, else a drawn 'polyp' (pink disc on red)."""
    return sample_polyp(tmp_path_factory.mktemp("ui"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, test_image):
    """The UI on a free loopback port, with a (fake) launch key that must never show."""
    from agent.ui.app import UiConfig, launch_app

    config = UiConfig(port=_free_port(), examples=[test_image], max_upload_mb=MAX_UPLOAD_MB,
                      workdir=tmp_path_factory.mktemp("ui_work"), api_key=SECRET)
    ui = launch_app(config, block=False, preload=True)
    yield ui.url, ui.app
    ui.close()


@pytest.fixture()
def client(server):
    return _client(server[0])


def test_upload_ask_and_download_masks(client, test_image):
    out = _ask(client, "find the polyps", test_image)
    turn = _turn(out["chat"])
    user = turn[0]
    assert user["content"][0]["type"] == "file" and _texts(user) == "find the polyps"
    titles = [(m.get("metadata") or {}).get("title") or "" for m in turn[1:]]
    assert "Plan" in titles, titles  # the plan
    assert any(t.startswith("Tool: ") for t in titles), titles  # each tool call
    assert all((m.get("metadata") or {}).get("status") != "pending" for m in turn)  # every step closed
    answer = _texts(turn[-1])
    assert answer and "Error" not in answer
    assert out["box"]["interactive"] is True and out["status"].startswith("Done")

    width, height = Image.open(test_image).size
    assert Image.open(out["overlay"]).size == (width, height)
    zip_path, json_path = out["downloads"]
    assert Path(zip_path).name == "masks.zip" and Path(json_path).name == "result.json"
    saved = json.loads(Path(json_path).read_text(encoding="utf-8"))
    assert saved["answer"] == answer and saved["planner"]
    rows = out["legend"]["data"]
    if rows:  # candidates were found: their set-of-marks overlay was shown in the chat as a step
        assert any(p.get("type") == "file" for m in turn[1:] for p in m["content"])
    assert out["legend"]["headers"] == ["#", "concept", "instance", "score", "area (px)", "area (%)"]
    assert len(rows) == sum(len(m["instances"]) for m in saved["masks"])
    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
        assert "result.json" in names
        for entry, row in zip([i for m in saved["masks"] for i in m["instances"]], rows, strict=True):
            assert entry["path"] in names
            with archive.open(entry["path"]) as f:
                mask = np.asarray(Image.open(f)) > 0
            assert mask.shape == (height, width)
            assert int(mask.sum()) == int(row[4])  # the legend's area is the downloaded mask's
            assert abs(float(row[5]) - 100 * mask.sum() / (height * width)) < 0.01

    # a follow-up in the same thread refines: no new upload, the same thread id
    follow = _ask(client, "only the largest one")
    assert _texts(_turn(follow["chat"])[0]) == "only the largest one"
    again = json.loads(Path(follow["downloads"][1]).read_text(encoding="utf-8"))
    assert again["thread_id"] == saved["thread_id"]
    assert len(follow["legend"]["data"]) <= max(1, len(rows))
    assert len(follow["chat"]) > len(out["chat"])  # the conversation is kept

    # "new chat": a new thread, nothing left of the old image
    cleared = client.predict(api_name="/new_chat")
    assert cleared[0] == []
    fresh = _ask(client, "find the polyps")
    assert "upload an image first" in _texts(fresh["chat"][-1])


def test_bad_files_and_oversized_uploads_are_refused_with_a_message(client, tmp_path):
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"this is not an image")
    out = _ask(client, "find the polyps", bad)
    message = _texts(out["chat"][-1])
    assert message.startswith("**Error:**") and "scan.png" in message and "not a readable image" in message
    assert "/tmp/gradio" not in message  # the file is named as the user knows it
    assert out["box"]["interactive"] is True

    big = tmp_path / "huge.png"
    big.write_bytes(os.urandom(int((MAX_UPLOAD_MB + 1) * 1024 * 1024)))
    with pytest.raises(ValueError, match="maximum file size"):  # refused before it is sent
        _ask(client, "find the polyps", big)
    import httpx  # the server refuses it too, whatever the client does

    url = client.src.rstrip("/") + "/gradio_api/upload"
    with big.open("rb") as f:
        response = httpx.post(url, files={"files": ("huge.png", f, "image/png")}, timeout=300)
    assert response.status_code == 413, response.text


def test_endpoint_down_is_a_readable_message_and_the_ui_stays_usable(client, test_image):
    port = _free_port()  # nothing listens here
    out = _ask(client, "find the polyps", test_image, planner="openai", base_url=f"http://127.0.0.1:{port}/v1",
               model="qwen-vl")
    message = _texts(out["chat"][-1])
    assert message.startswith("**Error:**") and f"127.0.0.1:{port}" in message, message
    assert out["box"]["interactive"] is True and out["downloads"] is None
    missing = _ask(client, "find the polyps", planner="openai", base_url="", model="")
    assert "base URL and a model" in _texts(missing["chat"][-1])
    # the same image, offline again: works
    ok = _ask(client, "find the polyps", planner="offline")
    assert ok["status"].startswith("Done") and ok["downloads"]


def test_openai_compatible_planner_through_the_ui(client, test_image):
    from agent_helpers import FakeOpenAI, tool_reply

    require_real_polyp(test_image)

    width, height = Image.open(test_image).size
    box = [width * 0.25, height * 0.25, width * 0.75, height * 0.75]
    script = [
        tool_reply("segment_geometry", {"boxes": [box], "concept": "polyp"}, call_id="call_a"),
        tool_reply("select_masks", {"ids": [1], "answer": "There is one polyp."}, call_id="call_b"),
    ]
    with FakeOpenAI(script) as fake:
        out = _ask(client, "find the polyps", test_image, planner="openai", base_url=fake.base_url,
                   model="fake-vlm")
    assert len(fake.requests) == 2 and fake.requests[0]["body"]["model"] == "fake-vlm"
    assert len(fake.images(0)) == 1  # the uploaded image went to the model
    turn = _turn(out["chat"])
    titles = [(m.get("metadata") or {}).get("title") or "" for m in turn]
    assert "Tool: segment_geometry" in titles and "Tool: select_masks" in titles, titles
    assert "There is one polyp." in _texts(turn[-1])
    assert [row[1:3] for row in out["legend"]["data"]] == [["polyp", 1]]
    saved = json.loads(Path(out["downloads"][1]).read_text(encoding="utf-8"))
    assert saved["planner"] == "openai:fake-vlm"
    with zipfile.ZipFile(out["downloads"][0]) as archive:
        assert saved["masks"][0]["instances"][0]["path"] in archive.namelist()


def test_the_panel_gates_at_calibrated_thresholds_unless_the_slider_is_chosen(server, client, test_image):
    app = server[1]
    params = {p["parameter_name"]: p for p in client.view_api(return_format="dict", print_info=False)
              ["named_endpoints"]["/ask"]["parameters"]}
    assert params["calibrated"]["parameter_default"] is True  # the panel's default: each concept's calibrated gate
    assert params["score_threshold"]["parameter_default"] == 0.5
    out = _ask(client, "find the polyps", test_image, calibrated=False, score_threshold=0.7)  # the slider chosen
    assert out["status"].startswith("Done"), out["status"]
    # the served Agents' segmenter handles, by their settings' threshold: the preloaded default one, and the slider's
    thresholds = {key[-1]: agent.segmenter.presence_threshold for key, agent in app.pool._agents.items()}
    assert thresholds[None] is None and thresholds[0.7] == 0.7


def test_concurrent_users_are_queued_and_a_16_bit_tiff_is_accepted(server, test_image, tmp_path):
    grey = np.asarray(Image.open(test_image).convert("L"), dtype=np.uint16) * 257  # 16-bit, full range
    tiff = tmp_path / "scan16.tif"
    Image.fromarray(grey).save(tiff)
    assert Image.open(tiff).mode.startswith("I;16")
    first, second = (_client(server[0]) for _ in range(2))
    jobs = [
        first.submit({"text": "find the polyps", "files": [gradio_client.handle_file(str(test_image))]},
                     api_name="/ask"),
        second.submit({"text": "find the polyps", "files": [gradio_client.handle_file(str(tiff))]},
                      api_name="/ask"),
    ]
    outs = [job.result(timeout=800) for job in jobs]
    threads = set()
    for chat, _box, overlay, _legend, downloads, status, _slider in outs:
        assert status.startswith("Done"), _texts(chat[-1])
        assert Image.open(overlay).size == Image.open(test_image).size
        threads.add(json.loads(Path(downloads[1]).read_text(encoding="utf-8"))["thread_id"])
    assert len(threads) == 2  # each user has their own thread
    tiff_turn = _turn(outs[1][0])[0]
    preview = tiff_turn["content"][0]["file"]  # shown to the user as the PNG the segmenter saw
    assert preview.endswith(".png") and Image.open(preview).size == Image.open(test_image).size


def test_the_api_key_never_reaches_the_page(server, client):
    import httpx

    url = server[0]
    for path in ("", "config", "gradio_api/info"):
        body = httpx.get(url + path, timeout=300).text
        assert SECRET not in body
    assert "OPENAI_API_KEY" in httpx.get(url + "config", timeout=300).text  # the panel says where it is read from


def _chromium_ready() -> str | None:
    """Why the browser test cannot run, or None. Installs Chromium with the project's script if missing."""
    if not CHROMIUM.exists() and shutil.which("apt-get"):
        subprocess.run(["bash", str(REPO / "scripts" / "install_browser.sh")], check=False, timeout=600)
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing and scripts/install_browser.sh could not install it"
    return None


@pytest.mark.browser
def test_browser_session_upload_ask_see_overlay_and_download(server, test_image, tmp_path):
    reason = _chromium_ready()
    if reason:
        pytest.skip(reason)
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "ui_session.png").unlink(missing_ok=True)
    with sync_api.sync_playwright() as p:
        # a fresh profile: Playwright passes it to Chromium as --user-data-dir
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000}, accept_downloads=True,
        )
        page = browser.new_page()
        try:
            page.goto(server[0], wait_until="domcontentloaded", timeout=120_000)
            box = page.locator("#ask-box")
            box.wait_for(timeout=120_000)
            box.locator("input[type=file]").set_input_files(str(test_image))
            # the upload shows as a thumbnail in the box before we send
            box.locator("img, .thumbnail-item, [data-testid='file']").first.wait_for(timeout=60_000)
            textarea = box.locator("textarea")
            textarea.fill("find the polyps")
            textarea.press("Enter")
            # the agent's steps stream in, then the final overlay and the downloads appear
            page.locator("#chat").get_by_text("Plan").first.wait_for(timeout=600_000)
            page.locator("#final-overlay img").first.wait_for(timeout=600_000)
            download = page.locator("#downloads a[download='result.json']")
            download.first.wait_for(timeout=120_000)
            assert page.locator("#downloads a[download='masks.zip']").count() == 1
            src = page.locator("#final-overlay img").first.get_attribute("src")
            assert src and "final_overlay" in src
            page.screenshot(path=str(ARTIFACTS / "ui_session.png"), full_page=True)
            with page.expect_download(timeout=60_000) as info:
                download.first.click()
            saved = tmp_path / "result.json"
            info.value.save_as(saved)
            assert "answer" in json.loads(saved.read_text(encoding="utf-8"))
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "ui_session_failed.png"), full_page=True)  # for whoever debugs it
            raise
        finally:
            browser.close()
    assert (ARTIFACTS / "ui_session.png").stat().st_size > 10_000
