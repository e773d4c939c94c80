"""One slow MLLM call holds up only its own chat, and the UI gives the MLLM the configured timeout.

Two users on the real UI (127.0.0.1): one asks through a fake OpenAI-compatible server that does
not answer until the test lets it, the other uses the offline planner. The offline turn finishes
while the slow one is still waiting. A second server with a 1-second timeout shows that the UI
passes its timeout on: a reply that takes longer ends the turn with a readable error.
"""

from __future__ import annotations

import threading
import time

import pytest
from agent_helpers import FakeOpenAI, tool_reply
from PIL import Image
from ui_helpers import ask, client, last_turn, require_real_polyp, sample_polyp, serve_ui, texts

from agent.ui.settings import UiSettings

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return sample_polyp(tmp_path_factory.mktemp("ui_concurrency"))


def test_a_slow_mllm_turn_does_not_hold_up_another_users_offline_turn(image, tmp_path):
    require_real_polyp(image)
    width, height = Image.open(image).size
    box = [width * 0.25, height * 0.25, width * 0.75, height * 0.75]
    release = threading.Event()

    def held_reply(body: dict) -> dict:
        release.wait(timeout=600)
        return tool_reply("segment_geometry", {"boxes": [box], "concept": "polyp"}, call_id="call_a")

    script = [held_reply, tool_reply("select_masks", {"ids": [1], "answer": "There is one polyp."}, call_id="b")]
    # a timeout longer than the test: the slow call must still be waiting, not timed out and retried
    with FakeOpenAI(script) as fake, serve_ui(workdir=tmp_path, concurrency=2,
                                              defaults=UiSettings(timeout=600, retries=0)) as ui:
        slow_user, quick_user = client(ui.url), client(ui.url)
        quick_user.predict(api_name="/new_chat")  # both sessions exist before the race starts
        slow = slow_user.submit({"text": "find the polyps", "files": [gradio_client.handle_file(str(image))]},
                                planner="openai", base_url=fake.base_url, model="fake-vlm", api_name="/ask")
        deadline = time.monotonic() + 600
        while not fake.requests:  # the slow turn is inside its MLLM call
            assert time.monotonic() < deadline and not slow.done(), "the slow turn never reached the MLLM"
            time.sleep(0.2)
        try:
            quick = ask(quick_user, "find the polyps", image, planner="offline")
            assert quick["status"].startswith("Done"), texts(quick["chat"][-1])
            assert not slow.done() and len(fake.requests) == 1  # the slow one is still waiting meanwhile
        finally:
            release.set()
        chat, _box, _overlay, legend, _downloads, status, _slider = slow.result(timeout=600)
    assert status.startswith("Done"), texts(chat[-1])
    assert "There is one polyp." in texts(last_turn(chat)[-1]) and len(legend["data"]) == 1


def test_the_ui_passes_its_mllm_timeout_to_the_client(image, tmp_path):
    late = {"status": 200, "delay": 5.0, **tool_reply("select_masks", {"ids": [], "answer": "late"})}
    with FakeOpenAI([late, late]) as fake, serve_ui(workdir=tmp_path, defaults=UiSettings(timeout=1, retries=0)) as ui:
        started = time.monotonic()
        out = ask(client(ui.url), "find the polyps", image, planner="openai", base_url=fake.base_url, model="m")
        elapsed = time.monotonic() - started
    message = texts(out["chat"][-1])
    assert message.startswith("**Error:**") and "within 1 s" in message, message
    assert len(fake.requests) == 1 and elapsed < 60  # one attempt (no retries), cut at 1 s, not 60 s x 4
