"""Security probe: an MLLM whose replies cannot be used must end the run in an error, never in "Nothing was found".

The planner talks to a scripted OpenAI-compatible server on 127.0.0.1 through the real `openai`
client; the segmenter is the real MedSAM3-Lite. The CLI tests run `medsam3-agent run` as a
subprocess against the same server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from agent_helpers import (
    FakeOpenAI,
    bad_arguments_reply,
    completion,
    error_reply,
    openai_agent,
    polyp_case,
    refusal_text_reply,
    tool_messages,
    tool_reply,
    truncated_reply,
)
from PIL import Image

from agent import PlannerError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def case():
    return polyp_case()


def run_cli(image_path: Path, question: str, out: Path, server: FakeOpenAI) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENAI_API_KEY": "test-key"}
    env.pop("MEDSAM3_COORDINATES", None)
    env.pop("OPENAI_BASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", str(image_path), question, "--out", str(out),
         "--planner", "openai", "--base-url", server.base_url, "--model", "fake-vlm", "--timeout", "20"],
        capture_output=True, text=True, check=False, timeout=900, cwd=ROOT, env=env,
    )


@pytest.fixture()
def image_file(case, tmp_path) -> Path:
    path = tmp_path / "input.png"
    Image.fromarray(case[0]).save(path)
    return path


def test_every_reply_with_truncated_json_arguments_is_an_error_not_nothing_found(case, segmenter):
    image, _ = case
    with FakeOpenAI([bad_arguments_reply] * 20) as server:
        events: list = []
        with pytest.raises(PlannerError, match=r"openai:fake-vlm gave 3 unusable replies.*not valid JSON") as info:
            events.extend(openai_agent(server, segmenter).stream("find the polyp", image=image))
    assert len(server.requests) == 3  # bounded: the default of 3 unusable replies in a row
    assert not any(e.kind == "answer" for e in events)
    assert "not valid JSON" in tool_messages(server, 1)[0]["content"]  # each was told to the model
    partial = info.value.partial
    assert partial is not None and partial.status == "error" and partial.masks == [] and partial.answer == ""
    assert "unusable replies" in partial.error


def test_schema_violations_and_unknown_tools_are_errors_told_briefly(case, segmenter):
    image, _ = case
    huge = [float(v) for v in range(50_000)]  # a "box" of 50,000 numbers fails the schema
    script = [tool_reply("segment_geometry", {"boxes": [huge]}, call_id="c1"),
              tool_reply("x" * 20_000, {"concept": "polyp"}, call_id="c2"),
              tool_reply("select_masks", {"ids": "all"}, call_id="c3")]
    with FakeOpenAI(script) as server, pytest.raises(PlannerError, match="unusable replies") as info:
        openai_agent(server, segmenter).run("find the polyp", image=image)
    assert len(server.requests) == 3
    first, second = tool_messages(server, 1)[0], tool_messages(server, 2)[0]
    assert "segment_geometry: invalid arguments" in first["content"] and len(first["content"]) < 1000
    assert "unknown tool" in second["content"] and len(second["content"]) < 1000
    echoed = [m for m in server.requests[2]["body"]["messages"] if m["role"] in ("assistant", "tool")]
    assert echoed and len(json.dumps(echoed)) < 5_000  # the huge input is not sent back
    assert "select_masks: invalid arguments" in str(info.value) and len(str(info.value)) < 1000


def test_refusals_count_as_unusable_replies(case, segmenter):
    image, _ = case
    refusal = completion({"content": None, "refusal": "I can't help with medical images."})
    with FakeOpenAI([refusal] * 3) as server, pytest.raises(PlannerError, match="the model refused"):
        openai_agent(server, segmenter).run("find the polyp", image=image)
    assert len(server.requests) == 3


def test_segment_calls_that_never_run_are_an_error_not_nothing_found(case, segmenter):
    image, _ = case
    h, w = image.shape[:2]

    def outside(body: dict):  # schema-valid, but every box lies outside the image
        return tool_reply("segment_geometry", {"boxes": [[w + 10, h + 10, w + 80, h + 80]]},
                          call_id=f"c{len(body['messages'])}")

    with FakeOpenAI([outside] * 10) as server, pytest.raises(PlannerError, match="no usable answer"):
        openai_agent(server, segmenter, max_rounds=1).run("find the polyp", image=image)
    assert "lies outside" in tool_messages(server, 1)[0]["content"]


def test_outage_after_a_segment_round_keeps_the_trace(case, segmenter):
    image, box = case
    script = [tool_reply("segment_geometry", {"boxes": [box], "concept": "polyp"}, call_id="call_a"),
              *[error_reply(500, "upstream down")] * 4]
    with FakeOpenAI(script) as server, pytest.raises(PlannerError, match="HTTP 500") as info:
        openai_agent(server, segmenter).run("find the polyp", image=image)
    partial = info.value.partial
    assert partial.status == "error" and "HTTP 500" in partial.error
    assert partial.masks == [] and partial.answer == "" and partial.rounds == 1
    results = [e for e in info.value.trace if e.kind == "tool_result"]
    assert results and results[0].data["name"] == "segment_geometry" and results[0].data["ids"][:1] == [1]
    assert info.value.trace[-1].kind == "error"
    data = partial.to_json()
    assert data["status"] == "error" and data["masks"] == [] and data["overlay"] is None


def test_run_cli_exits_non_zero_when_every_reply_is_unusable(image_file, tmp_path):
    out = tmp_path / "out"
    with FakeOpenAI([bad_arguments_reply] * 20) as server:
        done = run_cli(image_file, "find the polyp", out, server)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Nothing was found" not in done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("medsam3-agent run: error: openai:fake-vlm gave 3 unusable replies")
    assert "not valid JSON" in last and "Traceback" not in done.stderr
    data = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert data["status"] == "error" and "unusable replies" in data["error"] and data["masks"] == []
    assert not (out / "overlay.png").exists() and not (out / "masks").exists()


def test_run_cli_writes_the_trace_when_the_endpoint_fails_after_a_segment_round(case, image_file, tmp_path):
    _, box = case
    out = tmp_path / "out"
    script = [tool_reply("segment_geometry", {"boxes": [box], "concept": "polyp"}, call_id="call_a"),
              *[error_reply(500, "upstream down")] * 8]  # the CLI's client retries 3 times
    with FakeOpenAI(script) as server:
        done = run_cli(image_file, "find the polyp", out, server)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "HTTP 500" in done.stderr.strip().splitlines()[-1]
    data = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert data["status"] == "error" and "HTTP 500" in data["error"] and data["answer"] == ""
    assert data["masks"] == [] and not (out / "masks").exists()
    results = [e for e in data["trace"] if e["kind"] == "tool_result"]
    assert results[0]["data"]["name"] == "segment_geometry" and results[0]["data"]["ids"][:1] == [1]
    assert data["trace"][-1]["kind"] == "error" and "HTTP 500" in data["trace"][-1]["text"]


def test_run_cli_keeps_a_valid_report_no_mask_as_a_negative(image_file, tmp_path):
    out = tmp_path / "out"
    with FakeOpenAI([tool_reply("report_no_mask", {"answer": "No polyp is visible."})]) as server:
        done = run_cli(image_file, "find the polyp", out, server)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Nothing was found: No polyp is visible." in done.stdout
    data = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert data["status"] == "done" and data["error"] is None and data["masks"] == []


def test_text_calls_cut_off_at_the_token_limit_are_an_error_not_nothing_found(case, segmenter):
    image, box = case
    cut = truncated_reply("segment_geometry", {"boxes": [box], "concept": "polyp"})
    with FakeOpenAI([cut] * 5) as server, pytest.raises(PlannerError, match="unusable replies") as info:
        openai_agent(server, segmenter).run("find the polyp", image=image)
    assert len(server.requests) == 3
    assert "<tool_call> block is not valid JSON" in str(info.value) and "token limit" in str(info.value)
    assert info.value.partial.masks == [] and info.value.partial.answer == ""


def test_a_norm1000_box_outside_the_frame_is_told_in_the_models_frame(case, segmenter):
    image, _ = case
    script = [tool_reply("segment_geometry", {"boxes": [[1010, 1020, 1400, 1500]]}, call_id="c1"),
              tool_reply("report_no_mask", {"answer": "Could not place it."}, call_id="c2")]
    with FakeOpenAI(script) as server:
        result = openai_agent(server, segmenter, coordinate_convention="norm1000").run("find the polyp", image=image)
    told = tool_messages(server, 1)[0]["content"]
    assert "lies outside" in told and "0-1000 on both axes" in told
    assert json.loads(server.requests[1]["body"]["messages"][-3]["tool_calls"][0]["function"]["arguments"]) == \
        {"boxes": [[1010, 1020, 1400, 1500]]}  # its call is echoed as it wrote it
    assert result.masks == [] and result.answer.startswith("Nothing was found: Could not place it.")


def test_a_refusal_in_prose_is_an_error_not_nothing_found(case, segmenter):
    image, _ = case
    with FakeOpenAI([refusal_text_reply()] * 5) as server, pytest.raises(PlannerError, match="unusable") as info:
        openai_agent(server, segmenter).run("find the polyp", image=image)
    assert len(server.requests) == 3 and "I'm sorry, but I can't help" in str(info.value)
    assert info.value.partial.status == "error" and info.value.partial.masks == []
