"""Record and replay (issue 11 item 6): a run recorded against the fake OpenAI-compatible server on
127.0.0.1 replays, with the server stopped, to the same masks and answer; an ``eval`` run replays to the
same summary rows; a request the recording does not hold, or a recording changed after it was made, is
a clear error naming the problem. The segmenter is the real MedSAM3-Lite; images are drawn here or the
shared data's (``polyp_case``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from agent_helpers import FakeOpenAI, error_reply, polyp_case, tagged_reply, tool_reply
from test_evals_scale import TIMING, fake_model, lines, write_questions

from agent import Agent, PlannerError
from agent.cli import main as cli_main
from agent.mllm.openai_client import OpenAIClient
from agent.mllm.recording import ReplayMismatch

SECRET = "sk-recording-must-not-hold-this-7731"


@pytest.fixture(scope="module")
def case():
    return polyp_case()


def script(box: list[float]) -> list:
    return [tool_reply("segment_geometry", {"boxes": [box], "concept": "polyp"}, call_id="call_a"),
            tool_reply("select_masks", {"ids": [1], "answer": "There is one polyp."}, call_id="call_b")]


@pytest.fixture(scope="module")
def recorded(case, segmenter, tmp_path_factory):
    """A run recorded against the fake server (stopped when this returns), its result and its recording."""
    image, box = case
    folder = tmp_path_factory.mktemp("rec") / "recording"
    with FakeOpenAI(script(box)) as server:
        client = OpenAIClient(base_url=server.base_url, model="fake-vlm", api_key=SECRET, max_retries=0)
        result = Agent(planner=client, segmenter=segmenter, max_rounds=2, record=folder).run("find the polyp",
                                                                                             image=image)
    assert len(server.requests) == 2
    return image, result, folder


def masks_of(result) -> list[tuple[str, np.ndarray]]:
    return [(m.concept, inst.mask) for m in result.masks for inst in m.instances]


def test_a_recorded_run_replays_to_the_same_masks_and_answer_without_the_server(recorded, segmenter):
    image, live, folder = recorded
    assert len(list((folder / "requests").glob("*.json"))) == 2
    assert len(list((folder / "images").glob("*.png"))) >= 2  # the image, then its overlay: each stored once
    for path in folder.rglob("*"):  # no key, no header, no endpoint address
        assert not path.is_file() or SECRET.encode() not in path.read_bytes()
        assert not path.is_file() or b"127.0.0.1" not in path.read_bytes()
    replayed = Agent(planner="replay", replay=folder, segmenter=segmenter, max_rounds=2).run("find the polyp",
                                                                                            image=image)
    assert replayed.answer == live.answer and "There is one polyp." in replayed.answer
    assert replayed.planner == live.planner
    pairs = list(zip(masks_of(replayed), masks_of(live), strict=True))
    assert pairs and all(a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in pairs)
    assert [e.kind for e in replayed.trace] == [e.kind for e in live.trace]


def test_a_request_the_recording_does_not_hold_names_what_differs(recorded, segmenter):
    image, _, folder = recorded
    agent = Agent(planner="replay", replay=folder, segmenter=segmenter, max_rounds=2)
    with pytest.raises(ReplayMismatch) as caught:
        agent.run("find the polyps please", image=image)  # another question: the first request differs
    message = str(caught.value)
    assert "request 1 of this run" in message and "not in the recording" in message
    assert "differs at messages[1].content[0].text" in message, message
    other = image.copy()
    other[:8, :8] = 255 - other[:8, :8]  # another image: the same text, another picture
    with pytest.raises(ReplayMismatch, match=r"differs at messages\[1\]\.content\[1\]\.image_url\.url: image sha256"):
        agent.run("find the polyp", image=other)
    changed = Agent(planner="replay", replay=folder, segmenter=segmenter, max_rounds=1)  # another system prompt
    with pytest.raises(ReplayMismatch, match=r"differs at messages\[0\]\.content"):
        changed.run("find the polyp", image=image)


def test_a_tampered_or_missing_recording_is_refused(recorded, segmenter, tmp_path):
    import shutil

    image, _, folder = recorded
    with pytest.raises(ReplayMismatch, match="no recording at .*recording.json"):
        Agent(planner="replay", replay=tmp_path / "nowhere", segmenter=segmenter)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    entry = sorted((copy / "requests").glob("*.json"))[0]
    data = json.loads(entry.read_text(encoding="utf-8"))
    data["response"]["choices"][0]["message"]["content"] = "I changed my mind"
    entry.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ReplayMismatch, match=r"requests/.*\.json was changed after it was recorded"):
        Agent(planner="replay", replay=copy, segmenter=segmenter)
    shutil.rmtree(copy)
    shutil.copytree(folder, copy)
    for png in (copy / "images").glob("*.png"):
        png.write_bytes(png.read_bytes()[:-10])
    agent = Agent(planner="replay", replay=copy, segmenter=segmenter, max_rounds=2)
    with pytest.raises(PlannerError, match=r"images/.*\.png is missing or was changed"):
        agent.run("find the polyp", image=image)


def test_the_cli_replays_a_recorded_run(recorded, tmp_path, capsys):
    from PIL import Image

    image, live, folder = recorded
    path = tmp_path / "image.png"
    Image.fromarray(image).save(path)
    argv = ["run", str(path), "find the polyp", "--quiet", "--max-rounds", "2", "--out", str(tmp_path / "out")]
    assert cli_main([*argv, "--replay", str(folder), "--model", "m"]) == 2  # checked before anything loads
    assert "--model: a replay takes its model from the recording" in capsys.readouterr().err
    assert cli_main([*argv, "--planner", "offline", "--record", str(tmp_path / "rec")]) == 2
    assert "the offline planner sends none" in capsys.readouterr().err and not (tmp_path / "rec").exists()
    assert cli_main([*argv, "--replay", str(folder)]) == 0
    assert capsys.readouterr().out.strip() == live.answer
    saved = json.loads((tmp_path / "out" / "result.json").read_text(encoding="utf-8"))
    assert saved["answer"] == live.answer and saved["planner"] == "openai:fake-vlm"
    union = np.asarray(Image.open(tmp_path / "out" / saved["masks"][0]["path"])) > 0
    assert np.array_equal(union, live.union_mask())


def test_an_eval_run_replays_to_the_same_summary_rows(segmenter, tmp_path):
    from evals.modes import MeteredSegmenter
    from evals.runner import EvalConfig, run_eval

    questions = write_questions(tmp_path)
    metered = MeteredSegmenter(segmenter.backend)
    rec = tmp_path / "recording"
    common = {"questions": questions, "split": None, "modes": ["agent"], "hd95": False}
    with FakeOpenAI([fake_model] * 40) as server:
        run_eval(EvalConfig(out=tmp_path / "live", planner="openai", model="fake-vlm", base_url=server.base_url,
                            record=rec, **common), segmenter=metered, progress=False, log=lambda _: None)
    run_eval(EvalConfig(out=tmp_path / "replay", planner="replay", replay=rec, concurrency=2, **common),
             segmenter=metered, progress=False, log=lambda _: None)
    live, replay = (json.loads((tmp_path / d / "summary.json").read_text(encoding="utf-8")) for d in ("live", "replay"))

    def rows(summary: dict) -> list[dict]:
        return [{k: v for k, v in row.items() if k not in TIMING and "seconds" not in k} for row in summary["rows"]]

    assert rows(replay) == rows(live) and any(r["errors"] for r in rows(live))  # the failing question too
    identity = replay["identity"]
    assert identity["planner"] == "replay" and identity["model"] == "fake-vlm" and identity["endpoint"] is None
    assert len(identity["recording_sha256"]) == 64 and live["identity"]["recording_sha256"] is None
    records = lines(tmp_path / "replay" / "results.jsonl")
    assert all(r["identity"]["recording_sha256"] == identity["recording_sha256"] for r in records)


def test_an_endpoint_error_is_recorded_and_replayed(case, segmenter, tmp_path):
    """A server without a tool parser rejects `tools` (HTTP 400): the live run switches to the text protocol;
    the recording keeps that error, and the replay switches at the same request and ends the same way."""
    image, box = case
    folder = tmp_path / "rec"
    steps = [error_reply(400, "this server does not support tools"),
             tagged_reply("segment_geometry", {"boxes": [box], "concept": "polyp"}),
             tagged_reply("select_masks", {"ids": [1], "answer": "One polyp."})]
    with FakeOpenAI(steps) as server:
        client = OpenAIClient(base_url=server.base_url, model="fake-vlm", api_key="k", max_retries=0)
        live = Agent(planner=client, segmenter=segmenter, max_rounds=2, record=folder).run("find the polyp",
                                                                                           image=image)
    entries = [json.loads(p.read_text(encoding="utf-8")) for p in (folder / "requests").glob("*.json")]
    assert sorted(bool(e["error"]) for e in entries) == [False, False, True]
    assert next(e for e in entries if e["error"])["error"]["kind"] == "tools_unsupported"
    replayed = Agent(planner="replay", replay=folder, segmenter=segmenter, max_rounds=2).run("find the polyp",
                                                                                            image=image)
    assert "One polyp." in replayed.answer and replayed.answer == live.answer
    assert [(e.kind, e.text) for e in replayed.trace if e.kind == "error"] == \
        [(e.kind, e.text) for e in live.trace if e.kind == "error"] != []
    assert np.array_equal(replayed.union_mask(), live.union_mask()) and live.union_mask().any()
