"""The MLLM planner through the real `openai` client against a scripted OpenAI-compatible server on 127.0.0.1.

Every scripted conversation must end in a result or a clear ``PlannerError``, never a hang or a
crash; the images the model is sent must be the input image (first request), then the input image
and the overlay the agent rendered (later requests: at most two), and for each mask examined a
request of its own with the mask's clean and outlined crops. The segmenter is the real MedSAM3-Lite; the model's box
prompts go through LiteMedSAM's box decoder, so a box always yields a mask.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from agent_helpers import (
    FakeOpenAI,
    bare_json_reply,
    completion,
    ellipse_image,
    error_reply,
    fenced_reply,
    looking_model,
    mask_checker,
    openai_agent,
    polyp_case,
    tagged_reply,
    text_reply,
    tool_messages,
    tool_reply,
    truncated_reply,
)

from agent import Agent, PlannerError
from agent.mllm.frame import Frame, convention_for
from agent.mllm.openai_client import OpenAIClient
from agent.planners.mask_check import parse_verdict
from tools.examine import OUTLINE_RGB, mask_crops
from tools.segment import masks_iou


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
    # request 2: assistant tool call, the tool message (text), then a user message with the image and the overlay
    second = messages(server, 1)
    roles = [m["role"] for m in second]
    assert roles[-3:] == ["assistant", "tool", "user"]
    assert second[-3]["tool_calls"][0]["id"] == "call_a"
    assert second[-2]["tool_call_id"] == "call_a" and "#1" in second[-2]["content"]
    assert isinstance(second[-2]["content"], str)  # tool messages stay text-only
    sent = server.images(1)
    assert len(sent) == 2 and np.array_equal(sent[0], image)  # exactly the clean image, then the overlay
    assert any(np.array_equal(sent[1], overlay) for overlay in overlay_images(result))
    assert not np.array_equal(sent[1], image)  # the overlay has the mask drawn on it
    assert "the image as it is, then the current overlay" in second[-1]["content"][0]["text"]
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


def two_masks_checked(case, segmenter, verdicts: dict[int, str], middle: list, select: list[int], **options):
    """Segment the polyp's box and a corner box (#1, #2), play ``middle`` (None: a check request, answered from
    ``verdicts`` by the mask id it names), then select ``select``. The server (its requests) and the result."""
    image, box = case
    h, w = image.shape[:2]
    checker = mask_checker(verdicts)
    script = [tool_reply("segment_geometry", {"boxes": [box, [2.0, 2.0, w / 5, h / 5]]}, call_id="c1"),
              *[checker if step is None else step for step in middle],
              tool_reply("select_masks", {"ids": select, "answer": "One polyp."}, call_id="c9")]
    with FakeOpenAI(script) as server:
        result = openai_agent(server, segmenter, **options).run("find the polyp", image=image)
    return server, result


def test_examine_checks_each_mask_in_its_own_request_and_a_rejected_mask_is_not_kept(case, segmenter):
    image, _ = case
    verdicts = {1: '{"verdict": "accept", "reason": "the outline follows the polyp"}',
                2: 'Sure:\n```json\n{"verdict": "reject", "reason": "only mucosa, no polyp"}\n```'}
    server, result = two_masks_checked(case, segmenter, verdicts, [tool_reply("examine_masks", {}, call_id="c2"),
                                                                   None, None], [1, 2])
    assert len(server.requests) == 5
    crops = {e.data["ids"][0]: e.image for e in result.trace if e.kind == "overlay" and e.data.get("crop")}
    checked = []
    for index in (2, 3):  # one short request per mask: the question, the clean crop, the outlined crop; no tools
        body = server.requests[index]["body"]
        assert "tools" not in body and [m["role"] for m in body["messages"]] == ["user"]
        text = body["messages"][0]["content"][0]["text"]
        assert "find the polyp" in text and '"verdict"' in text
        mask_id = int(text.split("mask #")[1].split(",")[0])
        clean, outlined = server.images(index)
        assert np.array_equal(outlined, crops[mask_id]) and clean.shape == outlined.shape
        drawn = (clean != outlined).any(axis=-1)
        assert drawn.any() and (outlined[drawn] == OUTLINE_RGB).all()  # the outline only; elsewhere the same pixels
        checked.append(mask_id)
    assert sorted(checked) == [1, 2]
    kept = result.masks[0].instances[0].mask
    assert all(np.array_equal(a, b) for a, b in zip(server.images(checked.index(1) + 2), mask_crops(image, kept),
                                                    strict=True))
    # the verdicts reach the planner as the examine call's one tool result; the request shows the image and the
    # overlay without the rejected mask
    told = tool_messages(server, 4)
    assert [m["tool_call_id"] for m in told] == ["c2"]
    assert "#1 'region'" in told[0]["content"] and "accept - the outline follows the polyp" in told[0]["content"]
    assert "#2 'region'" in told[0]["content"] and "reject - only mucosa, no polyp" in told[0]["content"]
    sent = server.images(4)
    mine = [e for e in result.trace if e.kind == "overlay" and e.data.get("mllm")]
    assert len(sent) == 2 and np.array_equal(sent[0], image)
    assert mine[-1].data["ids"] == [1] and np.array_equal(sent[1], mine[-1].image)
    assert "rejected by the per-mask check (not drawn, not kept if selected): #2" in messages(server, 4)[1]["content"]
    # the model selects both; the rejected one is left out, and the answer says so
    assert len(result.masks) == 1 and len(result.masks[0].instances) == 1
    assert "One polyp. (#2 left out: the per-mask check rejected it)" in result.answer
    verdicts = {e.data["ids"][0]: e.data["verdict"] for e in result.trace if "verdict" in e.data}
    assert verdicts == {1: "accept", 2: "reject"}


def test_the_check_budget_bounds_the_check_requests_of_a_run(case, segmenter):
    verdicts = {1: "Accept. The outline follows the polyp.", 2: "Reject: background."}
    middle = [tool_reply("examine_masks", {"ids": [1, 2]}, call_id="c2"), None,
              tool_reply("examine_masks", {"ids": [1, 2]}, call_id="c3")]
    server, result = two_masks_checked(case, segmenter, verdicts, middle, [1], check_budget=1)
    assert len(server.requests) == 5  # one check request only: the budget of 1 is spent
    assert len(server.images(2)) == 2 and "mask #1," in messages(server, 2)[0]["content"][0]["text"]
    first = tool_messages(server, 3)[0]["content"]
    assert "#1 'region'" in first and ": accept - The outline follows the polyp." in first
    assert "#2 not checked: this run's budget of 1 MLLM calls for mask checks is spent" in first
    again = tool_messages(server, 4)[0]["content"]  # the same masks again: nothing new is sent
    assert "accept - The outline follows the polyp. (checked before)" in again and "#2 not checked" in again
    assert result.status == "done" and len(result.masks) == 1


def test_check_replies_that_are_neither_accept_nor_reject_are_unsure(case, segmenter):
    verdicts = {1: "The image shows 42 purple elephants.", 2: '{"verdict": "maybe", "reason": "hard"}'}
    server, result = two_masks_checked(case, segmenter, verdicts,
                                       [tool_reply("examine_masks", {"ids": [1, 2]}, call_id="c2"), None, None], [1, 2])
    told = tool_messages(server, 4)[0]["content"]
    assert "unsure - the reply was not accept or reject: 'The image shows 42 purple elephants.'" in told
    assert "unsure - the verdict was 'maybe', not accept or reject; reason given: hard" in told
    assert len(server.images(4)) == 2 and "rejected" not in messages(server, 4)[1]["content"] + told
    assert sum(len(m.instances) for m in result.masks) == 2  # unsure masks stay selectable


@pytest.mark.parametrize(("reply", "verdict", "reason"), [
    (text_reply('{"verdict": "reject", "reason": "covers a fold"}'), "reject", "covers a fold"),
    (text_reply('Looking closely.\n```json\n{"verdict": "Accepted", "reason": "ok"}\n```'), "accept", "ok"),
    (text_reply("**Verdict: reject** - the outline takes in the lumen."), "reject", "the outline takes in the lumen."),
    (text_reply("accept"), "accept", ""),
    (text_reply("I would not accept this; reject it."), "unsure", "the reply was not accept or reject"),
    (text_reply('{"verdict": "accept"'), "unsure", "the reply was not accept or reject"),  # cut off
    (completion({"content": None, "refusal": "I can't help with that."}), "unsure", "the model refused"),
    (completion({"content": ""}, "length"), "unsure", "the reply was empty (cut off at the token limit)"),
])
def test_check_replies_are_read_robustly(reply, verdict, reason):
    with FakeOpenAI([reply]) as server:
        client = OpenAIClient(base_url=server.base_url, model="fake-vlm", api_key="k", max_retries=0)
        got = parse_verdict(client.complete([{"role": "user", "content": "check"}]))
    assert got[0] == verdict and got[1].startswith(reason)


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
    sent = server.images(2)  # the image, then the previous answer's overlay
    assert len(sent) == 2 and np.array_equal(sent[0], image) and not np.array_equal(sent[1], image)
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


# --- the MLLM's frame: boxes in the model's own coordinates ----------------------------------------


@pytest.fixture(scope="module")
def large_case():
    return ellipse_image(3000, 1800)  # larger than the 2048-px frame, not square


@pytest.mark.parametrize(("model", "convention", "sent"), [
    ("fake-vlm", "pixels", (2048, 1228)),  # an unknown model: pixels of the image as sent
    ("gemini-2.0-flash", "norm1000", (2048, 1228)),  # Gemini's 0-1000, chosen by the model name
    ("Qwen/Qwen2.5-VL-7B-Instruct", "pixels", (2044, 1232)),  # Qwen2.5-VL: pixels, sides on its 28-px grid
])
def test_a_box_in_the_models_frame_segments_what_the_same_box_in_original_pixels_does(
        large_case, segmenter, model, convention, sent):
    image, box = large_case
    script = [looking_model(convention), tool_reply("select_masks", {"ids": [1]}, call_id="call_sel")]
    with FakeOpenAI(script) as server:
        result = openai_agent(server, segmenter, model=model).run("outline the lesion", image=image)
    first = server.images(0)[0]
    assert first.shape[:2] == (sent[1], sent[0])  # the frame the model saw
    system = messages(server, 0)[0]["content"]
    assert "3000" not in system and "1800" not in system  # the prompt states only the model's frame
    assert ("0-1000" in system) == (convention == "norm1000")
    assert convention == "norm1000" or f"{sent[0]}x{sent[1]} pixels" in system
    # the candidate's box comes back in the model's frame, near the box the model drew
    frame = Frame.for_model(3000, 1800, model)
    drawn = json.loads(messages(server, 1)[-3]["tool_calls"][0]["function"]["arguments"])["boxes"][0]
    listed = frame.box_from_original(result.masks[0].instances[0].box.as_list())
    assert np.allclose(listed, drawn, atol=0.03 * max(frame.sent_width, 1000))
    direct = segmenter.segment(image, boxes=[box]).instances[0].mask
    got = result.masks[0].instances[0].mask
    assert got.shape == (1800, 3000) and masks_iou(got, direct) >= 0.95


def test_the_coordinate_convention_can_be_set(large_case, segmenter, monkeypatch):
    image, box = large_case
    script = [looking_model("norm1000"), tool_reply("select_masks", {"ids": [1]}, call_id="call_sel")]
    with FakeOpenAI(script) as server:
        agent = openai_agent(server, segmenter, coordinate_convention="norm1000")
        result = agent.run("outline the lesion", image=image)
    assert agent.planner.coordinate_convention == "norm1000"
    direct = segmenter.segment(image, boxes=[box]).instances[0].mask
    assert masks_iou(result.masks[0].instances[0].mask, direct) >= 0.95
    monkeypatch.setenv("MEDSAM3_COORDINATES", "norm1000")
    with FakeOpenAI([]) as server:
        assert openai_agent(server, segmenter).planner.coordinate_convention == "norm1000"
    with FakeOpenAI([]) as server, pytest.raises(ValueError, match="unknown coordinate convention 'inches'"):
        openai_agent(server, segmenter, coordinate_convention="inches")


def test_model_families_pick_their_convention():
    assert convention_for("gpt-4o") == "pixels" and convention_for("Qwen/Qwen2.5-VL-72B-Instruct") == "pixels"
    assert convention_for("qwen2.5vl:7b") == "pixels"  # Ollama's spelling
    assert convention_for("Qwen/Qwen2-VL-7B-Instruct") == "norm1000" and convention_for("qwen3-vl-plus") == "norm1000"
    assert convention_for("google/gemini-2.5-pro") == "norm1000"
    assert convention_for("gemini-2.0-flash", "pixels") == "pixels"  # an explicit choice wins
    frame = Frame.fit(3000, 1800, convention="norm1000")
    assert frame.geometry_to_original({"boxes": [[500, 500, 1000, 1000]], "points": [{"x": 250, "y": 100}]}) == \
        {"boxes": [[1500.0, 900.0, 3000.0, 1800.0]], "points": [{"x": 750.0, "y": 180.0}]}
    assert frame.geometry_to_original({"boxes": [[1, 2, 3]]}) == {"boxes": [[1, 2, 3]]}  # left for the tool to refuse


# --- replies as real models write them -------------------------------------------------------------


@pytest.mark.parametrize("style", [tagged_reply, fenced_reply, bare_json_reply])
def test_tool_calls_written_in_the_text_are_run(case, segmenter, style):
    image, box = case
    script = [style("segment_geometry", {"boxes": [box], "concept": "polyp"}),
              style("select_masks", {"ids": [1], "answer": "One polyp."})]
    with FakeOpenAI(script) as server:
        result = openai_agent(server, segmenter).run("find the polyp", image=image)  # native tools offered
    assert "tools" in server.requests[0]["body"] and len(server.requests) == 2
    assert any(m["role"] == "user" and "Tool results" in str(m["content"]) for m in messages(server, 1))
    assert [m.concept for m in result.masks] == ["polyp"] and "One polyp." in result.answer


def test_a_call_cut_off_at_the_token_limit_is_told_then_the_next_one_runs(case, segmenter):
    image, box = case
    args = {"boxes": [box], "concept": "polyp"}
    script = [truncated_reply("segment_geometry", args), tagged_reply("segment_geometry", args),
              tagged_reply("select_masks", {"ids": [1]})]
    with FakeOpenAI(script) as server:
        result = openai_agent(server, segmenter).run("find the polyp", image=image)
    told = json.dumps(messages(server, 1))
    assert "not valid JSON" in told and "cut off" in told
    assert [m.concept for m in result.masks] == ["polyp"] and not result.answer.startswith("Nothing was found")
    assert any(e.kind == "error" and "token limit" in e.text for e in result.trace)


def test_a_repeated_prompt_is_not_run_again(case, segmenter):
    image, box = case
    call = {"boxes": [box], "concept": "polyp"}
    script = [tool_reply("segment_geometry", call, call_id="c1"), tool_reply("segment_geometry", call, call_id="c2"),
              tool_reply("select_masks", {"ids": [1]}, call_id="c3")]
    with FakeOpenAI(script) as server:
        result = openai_agent(server, segmenter).run("find the polyp", image=image)
    told = tool_messages(server, 2)[0]["content"]
    assert told.startswith("already tried: 'polyp' + 1 box(es): presence") and "#1 'polyp'" in told
    ran = [e for e in result.trace if e.kind == "tool_result" and e.data.get("name") == "segment_geometry"]
    assert ran[0].data["ids"] == [1] and ran[1].text.startswith("already tried") and "ids" not in ran[1].data
    assert [inst.mask.any() for m in result.masks for inst in m.instances] == [True]
    assert "#2" not in json.dumps(messages(server, 2))  # the segmenter made no second candidate


def test_masks_of_a_superseded_prompt_leave_the_overlay_but_stay_selectable(case, segmenter):
    image, box = case
    h, w = image.shape[:2]
    corner = [2.0, 2.0, w / 5, h / 5]
    script = [tool_reply("segment_geometry", {"boxes": [box], "concept": "polyp"}, call_id="c1"),
              tool_reply("segment_geometry", {"boxes": [corner]}, call_id="c2"),
              tool_reply("select_masks", {"ids": [1]}, call_id="c3")]
    with FakeOpenAI(script) as server:
        result = openai_agent(server, segmenter).run("find the polyp", image=image)
    clean, sent = server.images(2)
    assert np.array_equal(clean, image)
    mine = [e for e in result.trace if e.kind == "overlay" and e.data.get("mllm")]
    assert len(mine) == 1 and mine[0].data["ids"] == [2] and np.array_equal(sent, mine[0].image)
    both = [e for e in result.trace if e.kind == "overlay" and e.data.get("ids") == [1, 2]]
    assert both and not np.array_equal(sent, both[0].image)  # the tools node's overlay draws both
    told = json.dumps(messages(server, 2))
    assert "earlier ones are listed, not drawn" in told and "#1 'polyp'" in told
    assert [m.concept for m in result.masks] == ["polyp"] and result.masks[0].instances[0].mask.any()
