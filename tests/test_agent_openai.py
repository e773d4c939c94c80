"""The MLLM planner through the real `openai` client against a scripted OpenAI-compatible server on 127.0.0.1.

Every scripted conversation must end in a result or a clear ``PlannerError``, never a hang or a
crash; the images the model is sent must be the input image (first request) and the overlays
the agent rendered (later requests). The segmenter is the real MedSAM3-Lite; the model's box
prompts go through LiteMedSAM's box decoder, so a box always yields a mask.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from agent_helpers import FakeOpenAI, error_reply, openai_agent, polyp_case, text_reply, tool_messages, tool_reply

from agent import Agent, PlannerError
from agent.mllm import OpenAIClient


@pytest.fixture(scope="module")
def case():
    return polyp_case()


def messages(server: FakeOpenAI, index: int) -> list[dict]:
    return server.requests[index]["body"]["messages"]


def overlay_images(result) -> list[np.ndarray]:
    return [e.image for e in result.trace if e.kind == "overlay" and e.image is not None]


def test_native_tool_calls_segment_then_select_and_images_are_the_overlays(case, segmenter):
    image, box = case
    script = [
        tool_reply("segment_geometry", {"boxes": [box], "concept": "polyp"}, call_id="call_a"),
        tool_reply("select_masks", {"ids": [1], "answer": "There is one polyp."}, call_id="call_b"),
    ]
    with FakeOpenAI(script) as server:
        result = openai_agent(server, segmenter).run("find the polyp", image=image)
    assert len(server.requests) == 2
    first = server.requests[0]["body"]
    assert first["model"] == "fake-vlm"
    assert {t["function"]["name"] for t in first["tools"]} >= {"segment_concept", "select_masks", "report_no_mask"}
    assert "polyp" in first["messages"][0]["content"]  # the concept list is filled in the system prompt
    # request 1: the input image itself
    sent = server.images(0)
    assert len(sent) == 1 and np.array_equal(sent[0], image)
    # request 2: assistant tool call, the tool message (text), then a user message with the overlay
    second = messages(server, 1)
    roles = [m["role"] for m in second]
    assert roles[-3:] == ["assistant", "tool", "user"]
    assert second[-3]["tool_calls"][0]["id"] == "call_a"
    assert second[-2]["tool_call_id"] == "call_a" and "#1" in second[-2]["content"]
    assert isinstance(second[-2]["content"], str)  # tool messages stay text-only
    sent = server.images(1)
    assert len(sent) == 1
    assert any(np.array_equal(sent[0], overlay) for overlay in overlay_images(result))
    assert not np.array_equal(sent[0], image)  # the overlay has the mask drawn on it
    # the result
    assert result.planner == "openai:fake-vlm"
    assert [m.concept for m in result.masks] == ["polyp"]
    inst = result.masks[0].instances[0]
    assert inst.mask.shape == image.shape[:2] and inst.mask.any()
    assert result.union_mask().sum() == inst.mask.sum()
    assert "There is one polyp." in result.answer and "MLLM planner" in result.answer
    kinds = [e.kind for e in result.trace]
    assert kinds[0] == "plan" and kinds[-1] == "answer" and "tool_call" in kinds and "verdict" in kinds


def test_text_fallback_tool_calls(case, segmenter):
    image, box = case
    script = [
        text_reply('I will segment it.\n<tool>{"name": "segment_geometry", "parameters": {"boxes": ['
                   + json.dumps(box) + '], "concept": "polyp"}}</tool>'),
        text_reply('<tool>{"name": "select_masks", "parameters": {"ids": [1], "answer": "Found it."}}</tool>'),
    ]
    with FakeOpenAI(script) as server:
        result = openai_agent(server, segmenter, native_tools=False).run("find the polyp", image=image)
    assert all("tools" not in r["body"] for r in server.requests)
    assert "<tool>" in messages(server, 0)[0]["content"]  # the text protocol is explained in the system prompt
    second = messages(server, 1)
    assert not any(m["role"] == "tool" for m in second)  # no tool-call ids: results go in a user message
    assert any(m["role"] == "user" and "Tool results" in str(m["content"]) for m in second)
    assert [m.concept for m in result.masks] == ["polyp"] and "Found it." in result.answer


def test_malformed_reply_is_corrected_then_nothing_found(case, segmenter):
    image, _ = case
    script = [text_reply("I think there is a polyp somewhere."),
              tool_reply("report_no_mask", {"answer": "No optic disc in a colonoscopy image."})]
    with FakeOpenAI(script) as server:
        result = openai_agent(server, segmenter).run("outline the optic disc", image=image)
    assert len(server.requests) == 2
    assert "no tool call" in json.dumps(messages(server, 1))
    assert result.masks == [] and not result.union_mask().any()
    assert result.answer.startswith("Nothing was found")
    assert any(e.kind == "error" and "no readable tool call" in e.text for e in result.trace)


def test_replies_without_tool_calls_end_in_a_clear_error(case, segmenter):
    image, _ = case
    with FakeOpenAI([text_reply("hmm"), text_reply("still thinking"), text_reply("let me see")]) as server:
        agent = openai_agent(server, segmenter)
        events: list = []
        with pytest.raises(PlannerError, match=r"openai:fake-vlm gave 3 unusable replies in a row.*"
                                               r"no readable tool call: 'let me see'"):
            events.extend(agent.stream("find the polyp", image=image))
    assert len(server.requests) == 3
    assert events[-1].kind == "error" and not any(e.kind == "answer" for e in events)


def test_invalid_arguments_then_a_valid_call_the_model_sees_the_error(case, segmenter):
    image, box = case
    script = [tool_reply("segment_concept", '{"concept": ', call_id="call_cut"),
              tool_reply("segment_geometry", {"boxes": [box], "concept": "polyp"}, call_id="call_ok"),
              tool_reply("select_masks", {"ids": [1]}, call_id="call_sel")]
    with FakeOpenAI(script) as server:
        result = openai_agent(server, segmenter).run("find the polyp", image=image)
    assert len(server.requests) == 3
    told = tool_messages(server, 1)  # the second request carries the error for the first reply's call
    assert [m["tool_call_id"] for m in told] == ["call_cut"]
    assert "not valid JSON" in told[0]["content"] and "This call was not run" in told[0]["content"]
    assert result.status == "done" and [m.concept for m in result.masks] == ["polyp"]
    assert result.masks[0].instances[0].mask.any() and not result.answer.startswith("Nothing was found")
    assert any(e.kind == "error" and "unusable reply 1/3" in e.text for e in result.trace)


def test_a_usable_reply_resets_the_count_of_unusable_ones(case, segmenter):
    image, box = case
    bad = tool_reply("segment_concept", {"concept": ""}, call_id="call_bad")  # fails the schema
    script = [bad, bad, tool_reply("segment_geometry", {"boxes": [box]}, call_id="call_ok"),
              bad, bad, tool_reply("select_masks", {"ids": [1]}, call_id="call_sel")]
    with FakeOpenAI(script) as server:
        result = openai_agent(server, segmenter).run("find the polyp", image=image)
    assert len(server.requests) == 6 and len(result.masks) == 1
    assert "segment_concept: invalid arguments" in tool_messages(server, 1)[0]["content"]


def test_a_valid_report_no_mask_is_still_a_negative_answer(case, segmenter):
    image, _ = case
    script = [tool_reply("report_no_mask", {"answer": "No optic disc in a colonoscopy image."})]
    with FakeOpenAI(script) as server:
        result = openai_agent(server, segmenter).run("outline the optic disc", image=image)
    assert result.status == "done" and result.error is None and result.masks == []
    assert result.answer.startswith("Nothing was found: No optic disc in a colonoscopy image.")
    assert result.to_json()["status"] == "done"


def test_server_error_then_success_is_retried(case, segmenter):
    image, _ = case
    script = [error_reply(500), tool_reply("report_no_mask", {"answer": "Nothing there."})]
    with FakeOpenAI(script) as server:
        result = openai_agent(server, segmenter, max_retries=2).run("find the polyp", image=image)
    assert len(server.requests) == 2
    assert result.masks == [] and "Nothing there." in result.answer


def test_rate_limit_then_success_is_retried(case, segmenter):
    image, _ = case
    script = [error_reply(429, "slow down", headers={"retry-after": "0"}), tool_reply("report_no_mask", {})]
    with FakeOpenAI(script) as server:
        result = openai_agent(server, segmenter, max_retries=1).run("find the polyp", image=image)
    assert len(server.requests) == 2 and result.masks == []


def test_persistent_server_errors_end_in_a_clear_error(case, segmenter):
    image, _ = case
    with FakeOpenAI([error_reply(503, "overloaded")] * 3) as server, pytest.raises(PlannerError, match="HTTP 503"):
        openai_agent(server, segmenter, max_retries=1).run("find the polyp", image=image)
    assert len(server.requests) == 2  # one try and one retry, then a clear error


def test_timeout_is_a_clear_error(case, segmenter):
    image, _ = case
    slow = {**tool_reply("report_no_mask", {}), "delay": 3.0}
    with FakeOpenAI([slow]) as server, pytest.raises(PlannerError, match="did not answer within 0.5 s"):
        openai_agent(server, segmenter, timeout=0.5).run("find the polyp", image=image)


def test_timeout_then_success_is_retried(case, segmenter):
    image, _ = case
    slow = {**tool_reply("report_no_mask", {}), "delay": 3.0}
    with FakeOpenAI([slow, tool_reply("report_no_mask", {"answer": "none"})]) as server:
        result = openai_agent(server, segmenter, timeout=1.0, max_retries=1).run("find the polyp", image=image)
    assert len(server.requests) == 2 and result.masks == []


def test_unreachable_endpoint_is_a_clear_error(case, segmenter):
    image, _ = case
    with FakeOpenAI([]) as server:
        url = server.base_url
    client = OpenAIClient(base_url=url, model="fake-vlm", api_key="k", timeout=2.0, max_retries=0)
    with pytest.raises(PlannerError, match="cannot reach"):
        Agent(planner=client, segmenter=segmenter).run("find the polyp", image=image)


def test_unknown_tool_is_reported_back_to_the_model(case, segmenter):
    image, _ = case
    script = [tool_reply("zoom_in", {"factor": 2}, call_id="call_z"), tool_reply("report_no_mask", {}, "call_y")]
    with FakeOpenAI(script) as server:
        result = openai_agent(server, segmenter).run("find the polyp", image=image)
    told = tool_messages(server, 1)
    assert told[0]["tool_call_id"] == "call_z"
    assert "unknown tool 'zoom_in'" in told[0]["content"]
    assert result.masks == []


def test_invalid_json_arguments_are_reported_back(case, segmenter):
    image, _ = case
    script = [tool_reply("segment_concept", "{concept: polyp", call_id="call_j"), tool_reply("report_no_mask", {})]
    with FakeOpenAI(script) as server:
        result = openai_agent(server, segmenter).run("find the polyp", image=image)
    told = tool_messages(server, 1)
    assert "not valid JSON" in told[0]["content"]
    assert result.masks == []


def test_box_outside_the_image_is_reported_back(case, segmenter):
    image, _ = case
    h, w = image.shape[:2]
    script = [tool_reply("segment_geometry", {"boxes": [[w + 10, h + 10, w + 80, h + 80]]}, call_id="call_o"),
              tool_reply("report_no_mask", {"answer": "Could not place the box."}, call_id="call_p")]
    with FakeOpenAI(script) as server:
        result = openai_agent(server, segmenter).run("find the polyp", image=image)
    told = tool_messages(server, 1)
    assert told[0]["tool_call_id"] == "call_o"
    assert "lies outside" in told[0]["content"] and f"{w}x{h}" in told[0]["content"]
    assert result.masks == [] and result.answer.startswith("Nothing was found")


def test_selecting_an_unknown_id_is_reported_back(case, segmenter):
    image, box = case
    script = [tool_reply("segment_geometry", {"boxes": [box]}, call_id="c1"),
              tool_reply("select_masks", {"ids": [7]}, call_id="c2"),
              tool_reply("select_masks", {"ids": [1]}, call_id="c3")]
    with FakeOpenAI(script) as server:
        result = openai_agent(server, segmenter).run("find the polyp", image=image)
    assert "unknown mask id(s) [7]" in json.dumps(messages(server, 2))
    assert len(result.masks) == 1


def test_examine_masks_sends_zoomed_crops(case, segmenter):
    image, box = case
    script = [tool_reply("segment_geometry", {"boxes": [box], "concept": "polyp"}, call_id="c1"),
              tool_reply("examine_masks", {"ids": [1]}, call_id="c2"),
              tool_reply("select_masks", {"ids": [1]}, call_id="c3")]
    with FakeOpenAI(script) as server:
        result = openai_agent(server, segmenter).run("find the polyp", image=image)
    sent = server.images(2)
    assert len(sent) == 2  # the overlay, then the crop of #1
    overlays = overlay_images(result)
    assert all(any(np.array_equal(s, o) for o in overlays) for s in sent)
    assert len(result.masks) == 1


def test_round_limit_ends_the_run(case, segmenter):
    image, box = case

    def always_segment(body):
        return tool_reply("segment_geometry", {"boxes": [box]}, call_id=f"c{len(body['messages'])}")

    with FakeOpenAI([always_segment] * 10) as server:
        result = openai_agent(server, segmenter, max_rounds=1).run("find the polyp", image=image)
    assert len(server.requests) == 3  # plan, inspect after round 1, inspect after round 2
    assert result.rounds == 2
    assert any(e.kind == "verdict" and "did not finish" in e.text for e in result.trace)


def test_follow_up_turn_sees_the_previous_answer(case, segmenter):
    image, box = case
    script = [tool_reply("segment_geometry", {"boxes": [box], "concept": "polyp"}, call_id="c1"),
              tool_reply("select_masks", {"ids": [1]}, call_id="c2"),
              tool_reply("select_masks", {"ids": [1], "answer": "Still the same one."}, call_id="c3")]
    with FakeOpenAI(script) as server:
        agent = openai_agent(server, segmenter)
        agent.run("find the polyp", image=image, thread_id="conv")
        again = agent.run("now only the largest one", thread_id="conv")  # no image: the thread's
    context = json.dumps(messages(server, 2))
    assert "Earlier in this conversation" in context and "find the polyp" in context
    assert len(server.images(2)) == 1 and not np.array_equal(server.images(2)[0], image)  # previous overlay
    assert len(again.masks) == 1 and "Still the same one." in again.answer


def test_client_needs_a_model_name(monkeypatch):
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    with pytest.raises(ValueError, match="needs a model name"):
        OpenAIClient(base_url="http://127.0.0.1:9/v1")


def test_auto_planner_is_offline_without_an_endpoint(monkeypatch, segmenter):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    assert Agent(segmenter=segmenter).planner.label == "offline"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_MODEL", "fake-vlm")
    assert Agent(segmenter=segmenter).planner.label == "openai:fake-vlm"
