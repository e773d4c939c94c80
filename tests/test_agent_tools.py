"""Tools, prompts, mask storage and result files: the agent's building blocks, without a model."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from agent_helpers import OracleBackend
from PIL import Image

from agent.mllm.base import decode_data_url, image_data_url, parse_native_call, parse_text_tool_calls
from agent.planners.base import ThreadMasks
from agent.results import AgentResult, ConceptMask, StepEvent
from agent.store import MemoryMaskStore, SqliteMaskStore
from prompts import load_prompt
from segmenter import Segmenter, rle
from segmenter.types import Instance
from tools.context import ToolContext
from tools.executor import NOT_RUN_AFTER_SEGMENTS, is_segment_round, run_calls, run_tool
from tools.registry import TOOLS, openai_tools, parse_call, text_tool_list
from tools.schemas import Selection, ToolCall, ToolError


def disc(h: int, w: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


# --- prompts ---------------------------------------------------------------------------------------


def test_prompts_are_filled_and_keep_json_examples():
    frame = "The image as sent to you is 512x400 pixels."
    text = load_prompt("system", concepts="- polyp\n- optic cup", frame=frame, max_rounds=3)
    assert "- optic cup" in text and frame in text and "at most 3 rounds" in text
    assert "{concepts}" not in text
    fmt = load_prompt("text_tool_format", tool_list=text_tool_list())
    assert '<tool>{"name": "<tool name>"' in fmt and "segment_concept" in fmt


def test_prompt_errors_name_the_problem():
    with pytest.raises(KeyError, match="frame"):
        load_prompt("system", concepts="x", max_rounds=1)
    with pytest.raises(FileNotFoundError, match="no prompt named 'nope'"):
        load_prompt("nope")
    with pytest.raises(ValueError, match="plain file stem"):
        load_prompt("../system")


def test_every_tool_has_a_description_and_a_json_schema():
    schemas = openai_tools()
    assert {s["function"]["name"] for s in schemas} == set(TOOLS)
    for schema in schemas:
        assert schema["function"]["description"].strip()
        json.dumps(schema)  # serialisable for the request body
    assert "boxes" in TOOLS["segment_geometry"].openai_schema()["function"]["parameters"]["properties"]


# --- tool-call validation ------------------------------------------------------------------------


def test_parse_call_accepts_valid_calls_and_aliases():
    spec, args = parse_call("select_masks", {"mask_ids": [3, 4], "answer": "two"})
    assert spec.kind == "finish" and args.ids == [3, 4]
    spec, args = parse_call("segment_geometry", {"boxes": [[1, 2, 30, 40]], "points": [{"x": 5, "y": 6}]})
    assert spec.kind == "segment" and args.points[0].positive


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("zoom", {}, "unknown tool 'zoom'"),
        ("segment_concept", {}, "concept"),
        ("segment_concept", {"concept": "   "}, "empty"),
        ("segment_geometry", {}, "at least one box or point"),
        ("segment_geometry", {"boxes": [[1, 2, 3]]}, "4 numbers"),
        ("segment_geometry", {"boxes": [[10, 10, 5, 20]]}, "x1 > x0"),
        ("select_masks", {"ids": []}, "ids"),
        ("select_masks", "not a dict", "JSON object"),
    ],
)
def test_parse_call_errors_say_what_is_wrong(name, arguments, message):
    with pytest.raises(ToolError, match=message):
        parse_call(name, arguments)


def test_text_tool_calls_are_parsed_leniently():
    calls = parse_text_tool_calls('Sure.\n<tool>{"name": "segment_concept", "parameters": {"concept": "polyp"}}</tool>')
    assert [(c.name, c.arguments) for c in calls] == [("segment_concept", {"concept": "polyp"})]
    fenced = parse_text_tool_calls('<tool>```json\n{"name": "report_no_mask", "arguments": {}}\n```</tool>')
    assert fenced[0].name == "report_no_mask" and fenced[0].error is None
    assert parse_text_tool_calls("<tool>{not json</tool>")[0].error.startswith("the <tool> block is not valid JSON")
    assert "needs" in parse_text_tool_calls('<tool>{"parameters": {}}</tool>')[0].error
    assert parse_text_tool_calls("no tools here") == []
    assert parse_native_call("c1", "segment_concept", "[1, 2]").error.startswith("arguments must be a JSON object")


def test_images_travel_losslessly_as_data_urls():
    image = np.random.default_rng(0).integers(0, 255, (33, 47, 3), dtype=np.uint8)
    url = image_data_url(image)
    assert url.startswith("data:image/png;base64,")
    assert np.array_equal(decode_data_url(url), image)


# --- tools over a segmenter, through the one executor ---------------------------------------------


@pytest.fixture()
def oracle_tools(tmp_path):
    """A tool context over an oracle segmenter on a drawn 160x120 image with one 'polyp' disc."""
    image = np.full((120, 160, 3), 60, dtype=np.uint8)
    mask = disc(120, 160, 60, 80, 25)
    image[mask] = (200, 120, 100)
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    seg = Segmenter(OracleBackend({str(tmp_path / "img.png"): {"polyp": str(tmp_path / "mask.png")}}))
    seg.set_image(tmp_path / "img.png")
    return ToolContext(image=seg.image, segmenter=seg, masks=ThreadMasks(MemoryMaskStore(), "t")), mask


def test_every_tool_runs_through_run_tool(oracle_tools):
    ctx, mask = oracle_tools
    ctx.next_id = 7
    found = run_tool(ToolCall(name="segment_concept", arguments={"concept": " polyp "}), ctx)
    assert found.ok and found.kind == "segment" and [c.id for c in found.candidates] == [7]
    assert found.phrase == "polyp" and found.presence > 0.5 and "#7 'polyp'" in found.text
    assert np.array_equal(ctx.masks.get(7), mask)  # the tool put the mask in the thread's store
    ctx.add(found.candidates)
    boxed = run_tool(ToolCall(name="segment_geometry", arguments={"boxes": [[40, 20, 400, 400]]},
                              credited_concept="polyp", parents=[7]), ctx)
    assert [(c.id, c.concept, c.parent) for c in boxed.candidates] == [(8, "polyp", 7)]
    assert np.array_equal(ctx.masks.get(8), mask)  # the box was clipped to the image
    ctx.add(boxed.candidates)
    ctx.shown = ctx.candidates
    shown = run_tool(ToolCall(name="examine_masks", arguments={"mask_ids": [8]}), ctx)
    assert shown.kind == "examine" and shown.ids == [8] and "#8 'polyp'" in shown.text
    assert max(shown.images[0].shape[:2]) == 384 and "images" not in shown.model_dump()  # crops stay out of state
    sized = run_tool(ToolCall(name="measure", arguments={"ids": [8], "what": "area"}), ctx)
    assert sized.kind == "examine" and sized.measurements[0].pixels == mask.sum() and "px²" in sized.text
    chosen = run_tool(ToolCall(name="select_masks", arguments={"ids": [8, 8], "answer": " one "}), ctx)
    assert chosen.kind == "finish" and chosen.selection == Selection(ids=[8], answer="one")
    none = run_tool(ToolCall(name="report_no_mask", arguments={"answer": "none"}), ctx)
    assert none.ok and none.selection == Selection(ids=[], answer="none")
    assert {r.call.name for r in (found, boxed, shown, sized, chosen, none)} == set(TOOLS)


@pytest.mark.parametrize(
    ("call", "status", "message"),
    [
        (ToolCall(name="zoom"), "invalid", "unknown tool 'zoom'"),
        (ToolCall(name="segment_concept"), "invalid", "segment_concept: invalid arguments .*concept"),
        (ToolCall(name="segment_concept", problem="the <tool> block is not valid JSON"), "invalid", "not valid JSON"),
        (ToolCall(name="select_masks", arguments={"ids": [1]}, probe=True), "invalid", "cannot be a presence probe"),
        (ToolCall(name="segment_geometry", arguments={"boxes": [[200, 130, 260, 190]]}), "failed",
         r"outside the 160x120 image.*160x120 pixels"),
        (ToolCall(name="segment_geometry", arguments={"points": [{"x": 500, "y": 5}]}), "failed", "outside"),
        (ToolCall(name="select_masks", arguments={"ids": [5]}), "failed", r"unknown mask id\(s\) \[5\]"),
        (ToolCall(name="examine_masks"), "failed", "no candidate masks to examine"),
    ],
)
def test_tool_errors_come_back_as_results(oracle_tools, call, status, message):
    ctx, _ = oracle_tools
    result = run_tool(call, ctx)
    assert result.status == status and not result.ok and re.search(message, result.error)
    assert result.candidates == [] and result.selection is None and ctx.next_id == 1


def test_an_invalid_call_keeps_neither_huge_arguments_nor_a_long_problem(oracle_tools):
    ctx, _ = oracle_tools
    huge = ToolCall(name="segment_geometry", arguments={"boxes": [[float(v) for v in range(5000)]]}, call_id="c1")
    result = run_tool(huge, ctx)
    assert result.status == "invalid" and result.call.arguments == {} and result.call.call_id == "c1"
    assert result.error.startswith("segment_geometry: invalid arguments") and len(result.error) < 400


def test_a_presence_probe_keeps_nothing(oracle_tools):
    ctx, _ = oracle_tools
    probe = run_tool(ToolCall(name="segment_concept", arguments={"concept": "polyp"}, probe=True), ctx)
    assert probe.ok and probe.presence > 0.5 and probe.candidates == [] and "presence probe" in probe.text
    with pytest.raises(KeyError):
        ctx.masks.get(1)
    assert not is_segment_round([probe.call]) and is_segment_round([])


def test_a_batch_that_segments_runs_nothing_else(oracle_tools):
    ctx, _ = oracle_tools
    calls = [ToolCall(name="select_masks", arguments={"ids": [1]}),
             ToolCall(name="segment_concept", arguments={"concept": "polyp"}),
             ToolCall(name="segment_geometry", arguments={"boxes": [[40, 20, 120, 100]]}),
             ToolCall(name="zoom", arguments={"x": "y" * 5000})]
    seen: list[str] = []
    results = run_calls(calls, ctx, on_call=lambda call: seen.append(call.name))
    assert [r.status for r in results] == ["not_run", "ok", "ok", "invalid"]
    assert results[0].error == NOT_RUN_AFTER_SEGMENTS
    assert [c.id for r in results for c in r.candidates] == [1, 2] and ctx.next_id == 3  # numbered across calls
    assert seen == ["segment_concept", "segment_geometry", "zoom", "select_masks"] and is_segment_round(calls)
    assert results[3].call.arguments == {}  # the invalid call's huge input is not kept


def test_a_batch_without_segmentation_finishes_first_and_once(oracle_tools):
    ctx, _ = oracle_tools
    ctx.add(run_tool(ToolCall(name="segment_concept", arguments={"concept": "polyp"}), ctx).candidates)
    calls = [ToolCall(name="examine_masks"), ToolCall(name="select_masks", arguments={"ids": [9]}),
             ToolCall(name="report_no_mask"), ToolCall(name="select_masks", arguments={"ids": [1]})]
    results = run_calls(calls, ctx)
    assert [r.status for r in results] == ["not_run", "failed", "ok", "not_run"]
    assert results[2].selection == Selection(ids=[]) and not is_segment_round(calls)


# --- storage ----------------------------------------------------------------------------------------


def test_rle_round_trip_and_errors():
    rng = np.random.default_rng(1)
    for shape in [(1, 1), (37, 91), (512, 300)]:
        mask = rng.random(shape) > 0.7
        encoded = rle.encode(mask)
        json.dumps(encoded)
        assert np.array_equal(rle.decode(encoded), mask)
    with pytest.raises(ValueError, match="not a COCO RLE"):
        rle.decode({"counts": "x"})


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_mask_stores_round_trip(kind, tmp_path):
    store = MemoryMaskStore() if kind == "memory" else SqliteMaskStore(tmp_path / "db.sqlite")
    mask = disc(64, 80, 30, 40, 12)
    store.put_masks("t", {1: mask, 2: ~mask})
    assert np.array_equal(store.get_mask("t", 1), mask) and np.array_equal(store.get_mask("t", 2), ~mask)
    image = np.random.default_rng(2).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    store.put_image("k", image, thread_id="t")
    assert np.array_equal(store.get_image("k"), image) and store.get_image("other") is None
    store.delete_thread("t")
    with pytest.raises(KeyError, match="mask #1 of thread 't'"):
        store.get_mask("t", 1)


# --- results ------------------------------------------------------------------------------------------


def test_result_save_writes_binary_masks_at_image_size_and_relative_paths(tmp_path):
    h, w = 90, 120
    a, b = disc(h, w, 30, 30, 10), disc(h, w, 60, 80, 20)
    masks = [
        ConceptMask(concept="optic disc", image_size=(h, w),
                    instances=[Instance.from_mask(a, 0.9), Instance.from_mask(b, 0.6)]),
        ConceptMask(concept="optic-disc", image_size=(h, w), instances=[Instance.from_mask(b, 0.7)]),  # same slug
    ]
    result = AgentResult(question="q", answer="a", planner="offline", concepts_tried=["optic disc"], masks=masks,
                         image_size=(h, w), overlay=np.zeros((h, w, 3), np.uint8),
                         trace=[StepEvent(kind="plan", text="p", data={"x": 1, "bad": object()})])
    out = result.save(tmp_path / "out")
    data = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert set(data) >= {"answer", "planner", "concepts_tried", "masks"}
    assert [m["path"] for m in data["masks"]] == ["masks/optic_disc.png", "masks/optic_disc_.png"]
    assert data["trace"][0]["data"] == {"x": 1}  # non-JSON data is left out, not a crash
    first = data["masks"][0]
    union = np.asarray(Image.open(out / first["path"]))
    assert union.shape == (h, w) and set(np.unique(union)) <= {0, 255}
    assert np.array_equal(union > 0, a | b)
    for inst, expected in zip(first["instances"], [a, b], strict=True):
        assert np.array_equal(np.asarray(Image.open(out / inst["path"])) > 0, expected)
        assert len(inst["box"]) == 4 and 0 <= inst["score"] <= 1
    assert np.array_equal(result.union_mask(), a | b)
    assert Image.open(out / "overlay.png").size == (w, h)


def test_empty_result_saves_an_empty_mask_list(tmp_path):
    result = AgentResult(question="q", answer="Nothing was found.", planner="offline", concepts_tried=["polyp"],
                         masks=[], image_size=(10, 12), overlay=np.zeros((10, 12, 3), np.uint8))
    data = json.loads((result.save(tmp_path) / "result.json").read_text(encoding="utf-8"))
    assert data["masks"] == [] and not result.union_mask().any() and result.union_mask().shape == (10, 12)
