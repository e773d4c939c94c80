"""Benchmarks with an MLLM planner that can be trusted and scaled: the run's identity in every record and
the refusal of a mixed resume, failures counted as empty predictions, ``--concurrency`` and
``--executor ray`` giving the records of a plain run. The planner talks to the fake OpenAI-compatible
server on 127.0.0.1 through the real ``openai`` client; the segmenter is the real MedSAM3-Lite on
images drawn here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import FakeOpenAI, bright_box, text_reply, tool_reply
from PIL import Image

from agent.cli import main as cli_main
from agent.mllm.base import decode_data_url
from evals.modes import MeteredSegmenter
from evals.runner import EvalConfig, run_eval
from evals.summary import summarize

UNANSWERABLE = "Unanswerable-7"  # the fake model gives no usable reply to a question that holds this
TIMING = ("seconds", "encode_seconds", "agent_seconds")


def fake_model(body: dict):
    """Segments the bright object by its box, then selects the mask; stateless, so questions may interleave."""
    messages = body["messages"]
    if UNANSWERABLE in json.dumps(messages[:2]):
        return text_reply("hmm, hard to say")
    if not any(m["role"] == "tool" for m in messages):  # look at the image sent, box its bright object
        urls = [part["image_url"]["url"] for m in messages if isinstance(m.get("content"), list)
                for part in m["content"] if part.get("type") == "image_url"]
        return tool_reply("segment_geometry", {"boxes": [bright_box(decode_data_url(urls[-1]))]}, call_id="call_box")
    return tool_reply("select_masks", {"ids": [1], "answer": "Found it."}, call_id="call_select")


def write_questions(root: Path) -> Path:
    """Three dark images with one bright ellipse each (its mask the target), four questions: one unanswerable."""
    rng = np.random.default_rng(3)
    rows = []
    for i, (cx, cy) in enumerate([(40, 30), (90, 60), (60, 45)]):
        image = rng.integers(30, 70, size=(96, 128, 3), dtype=np.uint8)
        yy, xx = np.mgrid[:96, :128]
        disc = ((xx - cx) / 18) ** 2 + ((yy - cy) / 13) ** 2 <= 1
        image[disc] = (235, 225, 215)
        Image.fromarray(image).save(root / f"img{i}.png")
        Image.fromarray(disc.astype(np.uint8) * 255).save(root / f"mask{i}.png")
        rows.append({"id": f"q{i}", "image": str(root / f"img{i}.png"), "question": "Where is the lesion?",
                     "masks": {"lesion": str(root / f"mask{i}.png")}, "dataset": "drawn"})
    rows.append({**rows[0], "id": "q_fail", "question": f"{UNANSWERABLE}: what is this?"})
    path = root / "questions.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def comparable(records: list[dict]) -> list[dict]:
    return sorted(({k: v for k, v in r.items() if k not in TIMING} for r in records), key=lambda r: r["key"])


@pytest.fixture(scope="module")
def server():
    with FakeOpenAI([fake_model] * 400) as fake:
        yield fake


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> Path:
    return write_questions(tmp_path_factory.mktemp("drawn"))


@pytest.fixture(scope="module")
def metered(segmenter):
    return MeteredSegmenter(segmenter.backend)


def config(questions: Path, server: FakeOpenAI, out: Path, **options) -> EvalConfig:
    return EvalConfig(questions=questions, split=None, modes=["agent"], planner="openai", model="fake-vlm",
                      base_url=server.base_url, hd95=False, out=out, **options)


@pytest.fixture(scope="module")
def plain_run(questions, server, metered, tmp_path_factory) -> list[dict]:
    """The reference: one question at a time, in this process."""
    out = tmp_path_factory.mktemp("plain")
    run_eval(config(questions, server, out), segmenter=metered, progress=False, log=lambda _: None)
    return lines(out / "results.jsonl")


def test_identity_is_recorded_and_a_resume_with_another_model_is_refused(questions, server, tmp_path, monkeypatch,
                                                                         capsys):
    secret = "sk-test-never-written-4242"
    monkeypatch.setenv("EVAL_TEST_KEY", secret)
    out = tmp_path / "run"
    argv = ["eval", "--questions", str(questions), "--split", "all", "--mode", "agent", "--planner", "openai",
            "--base-url", server.base_url, "--api-key-env", "EVAL_TEST_KEY", "--no-hd95", "--limit", "2",
            "--out", str(out), "--no-progress"]
    assert cli_main([*argv, "--model", "fake-a"]) == 0
    port = server.base_url.split(":")[2].split("/")[0]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    identity = summary["identity"]
    assert (identity["planner"], identity["model"], identity["endpoint"]) == ("openai", "fake-a", f"127.0.0.1:{port}")
    assert identity["backend"] == "lite" and len(identity["weights_sha256"]) == 64
    assert "system.txt" in identity["prompts"] and len(identity["prompts_sha256"]) == 64
    records = lines(out / "results.jsonl")
    assert len(records) == 2
    for record in records:
        assert record["identity"] == {k: identity[k] for k in record["identity"]}
        assert record["identity"]["model"] == "fake-a" and "prompts_sha256" in record["identity"]
    report = (out / "report.md").read_text(encoding="utf-8")
    assert f"model `fake-a` at `127.0.0.1:{port}`" in report and "--api-key-env EVAL_TEST_KEY" in report
    for path in out.rglob("*"):  # the key is read from the environment and written nowhere
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path
    capsys.readouterr()

    # the same folder with another model would mix two models in one table: refused, naming what differs
    assert cli_main([*argv, "--model", "fake-b"]) == 2
    err = capsys.readouterr().err
    assert "holds results made with other settings (model: 'fake-a' -> 'fake-b')" in err and "--fresh" in err
    assert len(lines(out / "results.jsonl")) == 2
    # the same identity resumes
    assert cli_main([*argv, "--model", "fake-a"]) == 0
    assert "0 (mode, case) pairs run, 2 resumed, 0 errors" in capsys.readouterr().out
    # a key variable that is not set is named before anything runs
    monkeypatch.delenv("EVAL_TEST_KEY")
    assert cli_main([*argv, "--model", "fake-a"]) == 2
    assert "--api-key-env EVAL_TEST_KEY: that environment variable is not set here" in capsys.readouterr().err


def test_a_failing_question_counts_as_an_empty_prediction(plain_run):
    by_id = {r["id"]: r for r in plain_run}
    failed = by_id["q_fail"]
    assert "unusable replies" in failed["error"] and failed["target_area"] > 0 and failed["dice"] == 0.0
    answered = [by_id[f"q{i}"] for i in range(3)]
    assert all(r["error"] is None and r["dice"] > 0.5 for r in answered), [r["dice"] for r in answered]
    row = next(r for r in summarize(plain_run) if (r["mode"], r["dataset"], r["concept"]) == ("agent", "*", "*"))
    assert row["n"] == 4 and row["errors"] == 1
    mean_answered = sum(r["dice"] for r in answered) / 3
    assert row["dice"] == pytest.approx(mean_answered * 3 / 4, abs=1e-4) and row["dice"] < mean_answered


def test_concurrency_gives_the_records_of_a_plain_run(plain_run, questions, server, metered, tmp_path):
    out = tmp_path / "eight"
    outcome = run_eval(config(questions, server, out, concurrency=8), segmenter=metered, progress=False,
                       log=lambda _: None)
    assert (outcome.ran, outcome.errors) == (4, 1)
    assert comparable(lines(out / "results.jsonl")) == comparable(plain_run)


def test_ray_executor_gives_the_records_of_a_plain_run(plain_run, questions, server, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    try:
        out = tmp_path / "ray"
        outcome = run_eval(config(questions, server, out, executor="ray", workers=2), progress=False,
                           log=lambda _: None)
    finally:
        ray.shutdown()
    assert (outcome.ran, outcome.errors) == (4, 1)
    assert comparable(lines(out / "results.jsonl")) == comparable(plain_run)
    assert json.loads((out / "run.json").read_text(encoding="utf-8"))["config"]["executor"] == "ray"


def test_without_ray_the_executor_names_the_install_and_writes_nothing(questions, tmp_path):
    from test_cli import run_blocked

    out = tmp_path / "out"
    done = run_blocked(["ray"], "eval", "--questions", str(questions), "--split", "all", "--mode", "direct",
                       "--executor", "ray", "--out", str(out), "--no-progress")
    assert done.returncode == 2, done.stderr[-2000:]
    lines_ = done.stderr.strip().splitlines()
    assert len(lines_) == 1 and "pip install 'medsam3-agent[ray]'" in lines_[0], done.stderr[-2000:]
    assert not (out / "results.jsonl").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--concurrency", "0"], "--concurrency must be at least 1"),
    (["--workers", "2", "--concurrency", "4"], "--concurrency with --workers > 1 needs --executor ray"),
    (["--address", "auto"], "--address is the Ray cluster's: give it with --executor ray"),
    (["--planner", "offline", "--model", "m"], "--model configure the openai planner, not --planner offline"),
    (["--api-key-env", "sk-abc def"], "--api-key-env takes the name of an environment variable"),
    (["--planner", "openai"], "the openai planner needs a model name: --model M, or set OPENAI_MODEL"),
])
def test_scale_options_are_checked_in_one_line(questions, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    argv = ["eval", "--questions", str(questions), "--split", "all", "--mode", "agent", "--out", str(tmp_path / "o")]
    assert cli_main([*argv, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert "sk-abc" not in err  # a key pasted in place of a variable name is not echoed back
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_a_remote_segmenter_service_is_part_of_the_identity(questions, segmenter, tmp_path, monkeypatch):
    """The cluster set-up of docs/evals.md on one machine: the segmenter served over HTTP (as `serve-segmenter`
    does on a GPU node), the benchmark through ``--backend remote`` with questions in threads."""
    from segmenter.service.app import create_app, serve_in_background

    token = "eval-remote-token"
    with serve_in_background(create_app(segmenter.backend, token=token)) as url:
        monkeypatch.setenv("MEDSAM3_SEGMENTER_URL", url)
        monkeypatch.setenv("MEDSAM3_SEGMENTER_TOKEN", token)
        base = {"questions": questions, "split": None, "modes": ["direct"], "hd95": False}
        remote = run_eval(EvalConfig(**base, backend="remote", concurrency=2, out=tmp_path / "remote"),
                          progress=False, log=lambda _: None)
        local = run_eval(EvalConfig(**base, out=tmp_path / "local"), segmenter=MeteredSegmenter(segmenter.backend),
                         progress=False, log=lambda _: None)
    identity = json.loads((tmp_path / "remote" / "summary.json").read_text(encoding="utf-8"))["identity"]
    port = url.rsplit(":", 1)[1].rstrip("/")
    assert identity["backend"] == "remote" and identity["served"]["backend"] == "medsam3-lite"
    assert identity["served"]["model"] == "MedSAM3-Lite (LiteMedSAM + concept head)"
    assert identity["served"]["server"] == f"127.0.0.1:{port}" and token not in json.dumps(identity)
    assert remote.errors == 0 and remote.ran == 4
    # the same masks travelled: the scores equal those of the segmenter in this process
    scores = ("dice", "iou", "pred_area", "intersection")
    assert [[r[k] for k in scores] for r in comparable(lines(tmp_path / "remote" / "results.jsonl"))] == [
        [r[k] for k in scores] for r in comparable(lines(tmp_path / "local" / "results.jsonl"))]
    assert local.errors == 0
