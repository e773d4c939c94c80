"""The chat UI's parts without a server: events -> chat messages, legend, downloads, settings, CLI."""

from __future__ import annotations

import argparse
import json
import zipfile

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from agent.results import AgentResult, ConceptMask, StepEvent
from agent.ui.downloads import write_downloads
from agent.ui.render import LEGEND_HEADERS, Transcript, final_overlay, legend_rows
from agent.ui.settings import KEY_ENV, UiSettings, key_for, key_status
from segmenter.types import Instance


def _disc(shape: tuple[int, int], cx: int, cy: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


@pytest.fixture()
def result() -> AgentResult:
    """A real AgentResult: two polyps and one cup on a 60x80 image."""
    h, w = 60, 80
    image = np.full((h, w, 3), 90, dtype=np.uint8)
    polyps = [Instance.from_mask(_disc((h, w), 20, 20, 8), 0.91), Instance.from_mask(_disc((h, w), 60, 40, 5), 0.62)]
    cup = [Instance.from_mask(_disc((h, w), 40, 30, 3), 0.77)]
    masks = [ConceptMask(concept="polyp", instances=polyps, image_size=(h, w)),
             ConceptMask(concept="optic cup", instances=cup, image_size=(h, w))]
    return AgentResult(question="find the polyps", answer="Found 2 polyps.", planner="offline",
                       concepts_tried=["polyp", "optic cup"], masks=masks, image_size=(h, w), overlay=image,
                       thread_id="t1")


def test_transcript_streams_steps_tools_images_and_problems(tmp_path):
    transcript = Transcript(tmp_path)
    overlay = np.zeros((10, 12, 3), dtype=np.uint8)
    events = [
        StepEvent(kind="plan", text="concepts: polyp", node="plan", ms=12.0),
        StepEvent(kind="tool_call", text="segment_concept {'concept': 'polyp'}", data={"name": "segment_concept"}),
    ]
    for event in events:
        transcript.add(event)
    tool = transcript.messages[-1]
    assert tool["metadata"] == {"title": "Tool: segment_concept", "status": "pending"}  # a spinner while it runs
    transcript.add(StepEvent(kind="tool_result", text="2 instance(s)", data={"name": "segment_concept"}, ms=1500.0))
    assert tool["metadata"]["status"] == "done" and tool["metadata"]["duration"] == 1.5
    assert "2 instance(s)" in tool["content"]
    transcript.add(StepEvent(kind="overlay", text="round 1: 2 candidates", image=overlay))
    transcript.add(StepEvent(kind="verdict", text="keep #1 and #2"))
    transcript.add(StepEvent(kind="error", text="switching to the text tool protocol"))
    transcript.add(StepEvent(kind="answer", text="Found 2 polyps.", image=overlay))

    titles = [m.get("metadata", {}).get("title") for m in transcript.messages]
    assert titles == ["Plan", "Tool: segment_concept", None, "Verdict", "Problem", None]
    image_part = transcript.messages[2]["content"][0]
    assert Image.open(image_part["path"]).size == (12, 10)
    assert transcript.messages[-1]["content"] == "Found 2 polyps."
    # the answer's overlay goes to the large panel, not into the chat a second time
    assert len(list(tmp_path.glob("*.png"))) == 1


def test_a_volume_runs_slice_progress_is_one_step_and_measurements_are_listed_with_units(tmp_path):
    from segmenter.study import Geometry
    from tools.measure import area, count

    transcript = Transcript(tmp_path)
    transcript.add(StepEvent(kind="plan", text="segment ['lung'] on 40 slice(s)"))
    for done in (10, 20, 40):  # a volume run's progress events: one step, updated in place
        transcript.add(StepEvent(kind="tool_result", node="segment_volume", text=f"slices {done}/40",
                                 data={"done": done, "total": 40}, ms=done * 100.0))
    progress = transcript.messages[-1]
    assert len(transcript.messages) == 2 and progress["content"] == "slices 40/40"
    assert progress["metadata"] == {"title": "Segmenting slices", "status": "pending", "duration": 4.0}
    transcript.add(StepEvent(kind="answer", text="lung: volume 50 mL."))
    assert progress["metadata"]["status"] == "done"
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    transcript.measurements([area(mask, Geometry(pixel_spacing=(0.5, 0.5)), "lung", [1]), count("lung", [1])])
    transcript.measurements([])  # nothing measured: no message
    assert transcript.messages[-1]["content"] == "**Measurements**\n- lung area 25.0 mm² (100 px, 25.0% of the " \
        "image)\n- lung: 1 instance"


def test_legend_lists_every_instance_with_area_in_pixels_and_percent(result):
    rows = legend_rows(result, (60, 80))
    assert len(rows[0]) == len(LEGEND_HEADERS)
    assert [r[:3] for r in rows] == [[1, "polyp", 1], [2, "polyp", 2], [3, "optic cup", 1]]
    for row, inst in zip(rows, [i for m in result.masks for i in m.instances], strict=True):
        assert row[3] == round(inst.score, 3)
        assert row[4] == int(inst.mask.sum())
        assert row[5] == round(100 * inst.mask.sum() / (60 * 80), 2)
    empty = result.model_copy(update={"masks": []})
    assert legend_rows(empty, (60, 80)) == []


def test_final_overlay_labels_instances_in_legend_order(result):
    image = np.full((60, 80, 3), 90, dtype=np.uint8)
    overlay = final_overlay(image, result)
    assert overlay.shape == image.shape and overlay.dtype == np.uint8
    for inst in (i for m in result.masks for i in m.instances):
        assert (overlay[inst.mask] != image[inst.mask]).any(axis=-1).mean() > 0.5  # every instance is tinted
    assert (final_overlay(image, result.model_copy(update={"masks": []})) == image).all()


def test_downloads_zip_holds_the_mask_pngs_and_result_json(result, tmp_path):
    downloads = write_downloads(result, tmp_path)
    assert [p.split("/")[-1] for p in downloads.files()] == ["masks.zip", "result.json"]  # never the upload's name
    saved = json.loads(downloads.result_json.read_text(encoding="utf-8"))
    assert saved["answer"] == "Found 2 polyps." and saved["planner"] == "offline"
    with zipfile.ZipFile(downloads.masks_zip) as archive:
        names = set(archive.namelist())
        expected = {"result.json"}
        for entry in saved["masks"]:
            expected.add(entry["path"])
            expected.update(i["path"] for i in entry["instances"])
        assert names == expected  # every path result.json names is in the zip, and no overlay
        first = saved["masks"][0]["instances"][0]["path"]
        with archive.open(first) as f:
            mask = np.asarray(Image.open(f))
    assert mask.shape == (60, 80) and set(np.unique(mask)) == {0, 255}
    assert ((mask > 0) == result.masks[0].instances[0].mask).all()


def test_settings_validate_and_describe():
    settings = UiSettings(planner="openai", base_url=" http://127.0.0.1:9/v1/ ", model=" m ", max_rounds=2)
    assert settings.base_url == "http://127.0.0.1:9/v1" and settings.model == "m"
    assert "m at http://127.0.0.1:9/v1" in settings.describe()
    for bad in ({"base_url": "ftp://x"}, {"max_rounds": 0}, {"score_threshold": 1.5}, {"backend": "nope"}):
        with pytest.raises(ValueError):
            UiSettings(**bad)


def test_settings_default_to_each_concepts_calibrated_presence_threshold():
    from agent.ui.runner import AgentPool

    calibrated, fixed = UiSettings(), UiSettings(score_threshold=0.7)
    assert calibrated.score_threshold is None  # not 0.5: the segmenter's own per-concept gate
    assert calibrated.describe().endswith("calibrated presence thresholds")
    assert fixed.describe().endswith("score threshold 0.70")
    # the pool's Agents differ by it: one at the calibrated gates, one at 0.5 for every concept
    assert AgentPool._agent_key(calibrated) != AgentPool._agent_key(UiSettings(score_threshold=0.5))


def test_the_panels_checkbox_chooses_calibrated_thresholds_over_the_slider(tmp_path):
    from agent.ui.app import ChatApp, UiConfig, build_app

    def panel(defaults: UiSettings) -> tuple[dict, dict]:
        demo, _ = build_app(UiConfig(workdir=tmp_path, defaults=defaults))
        parts = {c.elem_id: c for c in demo.blocks.values() if c.elem_id in ("calibrated-threshold", "score-threshold")}
        return parts["calibrated-threshold"].get_config(), parts["score-threshold"].get_config()

    box, slider = panel(UiSettings())
    assert box["value"] is True and slider["interactive"] is False  # calibrated by default, the slider unused
    box, slider = panel(UiSettings(score_threshold=0.7))  # `ui --score-threshold 0.7`
    assert box["value"] is False and slider["interactive"] is True and slider["value"] == 0.7

    app = ChatApp(UiConfig(workdir=tmp_path))
    turn = ("offline", "", "", "lite", 3)
    assert app._turn_settings(*turn, True, 0.7, "auto").score_threshold is None  # the slider is ignored
    assert app._turn_settings(*turn, False, 0.7, "auto").score_threshold == 0.7
    with pytest.raises(ValueError, match="true or false"):
        app._turn_settings(*turn, "yes", 0.7, "auto")
    app.shutdown()


def test_the_window_setting_is_read_by_the_one_window_parser():
    assert UiSettings().window == "auto" and UiSettings().load_window() is None  # the loader's own rule, as before
    assert UiSettings(window=None).window == UiSettings(window=" AUTO ").window == "auto"
    assert UiSettings(window="Lungs").load_window() == "lung"  # segmenter.windows' aliases
    assert UiSettings(window=" -600, 1500 ").load_window() == "-600,1500"
    assert UiSettings(window="40/400").describe().endswith("window 40,400")
    assert "window" not in UiSettings().describe()
    for bad, named in (("lungz", "'lungz'"), ("40,0", "width 0.0"), ("4" * 101, "at most 100"), (5, "string")):
        with pytest.raises(ValidationError, match=named) as caught:
            UiSettings(window=bad)
        assert caught.value.errors()[0]["loc"] == ("window",)
    # the same key as before: the window is applied when a file is read, not by the Agent
    from agent.ui.runner import AgentPool

    assert AgentPool._agent_key(UiSettings(window="lung")) == AgentPool._agent_key(UiSettings())


def test_the_panels_window_offers_auto_and_the_presets_and_takes_level_width(tmp_path):
    from agent.cli import build_parser
    from agent.ui import config_from_args
    from agent.ui.app import UiConfig, build_app

    def dropdown(defaults: UiSettings) -> dict:
        demo, _ = build_app(UiConfig(workdir=tmp_path, defaults=defaults))
        return next(c for c in demo.blocks.values() if c.elem_id == "window").get_config()

    panel = dropdown(UiSettings())
    assert panel["value"] == "auto" and panel["allow_custom_value"] is True
    assert {"auto", "lung", "abdomen", "brain"} <= {value for _, value in panel["choices"]}
    defaults = config_from_args(build_parser().parse_args(["ui", "--window=-600,1500"])).defaults
    assert dropdown(defaults)["value"] == "-600,1500"  # `ui --window` sets the panel's default


def test_api_key_is_never_shown_and_only_sent_where_the_operator_allows():
    key = "sk-test-not-a-real-key"
    assert KEY_ENV in key_status(True) and "(set)" in key_status(True)
    launch = "https://api.example.org/v1"
    # a loopback-only UI: the visitor is the operator, any endpoint gets the key
    assert key_for("http://127.0.0.1:8000/v1", key, launch_base_url="", host="127.0.0.1") == key
    # a UI open to the network: only the endpoint chosen at launch gets it
    assert key_for(launch + "/", key, launch_base_url=launch, host="0.0.0.0") == key
    assert key_for("http://attacker.example/v1", key, launch_base_url=launch, host="0.0.0.0") is None
    assert key_for(launch, None, launch_base_url=launch, host="127.0.0.1") is None
    assert "not set" in key_status(False)


def test_cli_defaults_bind_loopback_and_read_examples(tmp_path, monkeypatch):
    from agent.cli import build_parser
    from agent.ui import config_from_args
    from agent.ui.app import find_examples

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    args = build_parser().parse_args(["ui", "--examples", str(tmp_path), "--port", "7999"])
    assert isinstance(args, argparse.Namespace)
    config = config_from_args(args)
    assert config.host == "127.0.0.1" and config.port == 7999 and config.defaults.planner == "offline"
    assert config.defaults.score_threshold is None  # each concept's calibrated presence threshold
    fixed = config_from_args(build_parser().parse_args(["ui", "--score-threshold", "0.7"]))
    assert fixed.defaults.score_threshold == 0.7
    assert [p.name for p in find_examples(config.examples)] == ["a.jpg", "b.png"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        find_examples([tmp_path / "missing"])
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    monkeypatch.setenv("OPENAI_MODEL", "qwen")
    assert config_from_args(build_parser().parse_args(["ui"])).defaults.planner == "openai"


def test_a_ui_turn_gates_a_concept_as_the_cli_does_unless_the_slider_is_chosen(segmenter, tmp_path):
    """On a real brain MRI slice: the panel's default leaves "brain tumor" at its calibrated gate (the backend's
    own, as `medsam3-agent run` has it), so the turn segments exactly as the CLI; a slider threshold overrides it."""
    from conftest import DATA, val_rows

    from agent.ui.runner import AgentPool

    gate = getattr(segmenter.backend, "gate", None)
    if gate is None or gate("brain tumor") == 0.5:
        pytest.skip("the segmenter has no calibrated presence threshold for 'brain tumor'")
    if not (DATA / "brain_mri" / "manifest.jsonl").exists():
        pytest.skip(f"brain_mri not found in {DATA}")
    image = next(r["image"] for r in val_rows("brain_mri") if r["id"] == "brats2013_pat0006_z062")  # a tumour
    pool = AgentPool(tmp_path / "threads.sqlite", segmenters={"lite": segmenter})
    default = pool.agent(UiSettings()).segmenter
    assert default.presence_threshold is None  # so the backend's per-concept gate applies
    found, cli = default.segment(image, "brain tumor"), segmenter.segment(image, "brain tumor")
    assert found.presence == cli.presence and len(found.instances) == len(cli.instances) >= 1
    assert all((a.mask == b.mask).all() for a, b in zip(found.instances, cli.instances, strict=True))
    assert gate("brain tumor") <= found.presence < 1.0
    strict = pool.agent(UiSettings(score_threshold=1.0)).segmenter  # the slider at its top: above this presence
    assert strict.presence_threshold == 1.0 and strict.segment(image, "brain tumor").instances == []
