"""agent/config.py: the environment read once, one "auto" planner rule everywhere, settings passed
explicitly, and the presence threshold as a per-run argument that leaves the shared backend alone."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.config import Settings

ROOT = Path(__file__).resolve().parents[1]
ENV = ("OPENAI_BASE_URL", "OPENAI_MODEL", "OPENAI_API_KEY", "MEDSAM3_UI_AUTH", "MEDSAM3_CHECK_BUDGET")


@pytest.fixture()
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_settings_read_the_environment_and_hide_secrets(clean_env):
    clean_env.setenv("OPENAI_BASE_URL", " http://127.0.0.1:9/v1 ")
    clean_env.setenv("OPENAI_MODEL", "qwen")
    clean_env.setenv("OPENAI_API_KEY", "sk-never-shown")
    clean_env.setenv("MODEL", "not-ours")  # unprefixed names are someone else's
    settings = Settings()
    assert (settings.openai_base_url, settings.openai_model) == ("http://127.0.0.1:9/v1", "qwen")
    assert settings.llm_options() == {"base_url": "http://127.0.0.1:9/v1", "model": "qwen", "api_key": "sk-never-shown"}
    assert "sk-never-shown" not in repr(settings) and "sk-never-shown" not in str(settings)
    clean_env.setenv("OPENAI_API_KEY", "   ")  # blank means unset, not a key of spaces
    assert Settings().openai_api_key is None


@pytest.mark.parametrize(("env", "flags", "expected"), [
    ({}, {}, "offline"),
    ({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_MODEL": "m"}, {}, "openai"),
    ({"OPENAI_MODEL": "m"}, {}, "openai"),  # a model alone: OpenAI's own endpoint
    ({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}, {}, "openai"),  # a URL alone: "needs a model name" later
    ({}, {"model": "m"}, "openai"),
    ({}, {"base_url": "http://127.0.0.1:9/v1"}, "openai"),
    ({"OPENAI_MODEL": " "}, {}, "offline"),
])
def test_one_auto_rule_base_url_or_model(clean_env, env, flags, expected):
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert Settings().planner_for("auto", **flags) == expected


def test_an_explicit_planner_wins_and_a_wrong_name_is_refused(clean_env):
    clean_env.setenv("OPENAI_MODEL", "m")
    assert Settings().planner_for("offline") == "offline"
    assert Settings().planner_for("openai") == "openai"
    with pytest.raises(ValueError, match="unknown planner"):
        Settings().planner_for("gpt")


def test_the_ui_follows_the_same_rule(clean_env):
    from agent.cli import build_parser
    from agent.ui import config_from_args

    clean_env.setenv("OPENAI_MODEL", "m")  # the UI used to need both variables; run and Agent() needed either
    config = config_from_args(build_parser().parse_args(["ui"]))
    assert config.defaults.planner == "openai" and config.defaults.model == "m"
    explicit = config_from_args(build_parser().parse_args(["ui"]), Settings(openai_model=""))
    assert explicit.defaults.planner == "offline"  # the settings passed in, not the environment


def test_ui_reads_its_login_and_key_from_the_settings(clean_env):
    from agent.cli import build_parser
    from agent.ui import config_from_args

    settings = Settings(medsam3_ui_auth="ops:pw-from-settings", openai_api_key="sk-ui")
    config = config_from_args(build_parser().parse_args(["ui"]), settings)
    assert config.auth == [("ops", "pw-from-settings")]
    assert config.api_key is not None and config.api_key.get_secret_value() == "sk-ui"
    assert "sk-ui" not in repr(config) and "pw-from-settings" not in repr(config)


def test_the_client_takes_only_what_it_is_given(clean_env):
    from agent.mllm.openai_client import OpenAIClient

    clean_env.setenv("OPENAI_MODEL", "from-env")
    with pytest.raises(ValueError, match="needs a model name"):  # no hidden read of $OPENAI_MODEL
        OpenAIClient(base_url="http://127.0.0.1:9/v1")
    client = OpenAIClient.from_env(Settings(openai_base_url="http://127.0.0.1:9/v1", openai_model="from-settings"))
    assert (client.model, client.base_url) == ("from-settings", "http://127.0.0.1:9/v1")
    assert OpenAIClient.from_env(Settings(), model="flag").model == "flag"  # a run's flags win


def test_agent_uses_the_settings_it_is_given(clean_env, segmenter):
    from agent import Agent

    clean_env.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    clean_env.setenv("OPENAI_MODEL", "fake-vlm")
    assert Agent(segmenter=segmenter).planner.label == "openai:fake-vlm"  # nothing passed: the environment
    assert Agent(segmenter=segmenter, settings=Settings(openai_base_url="", openai_model="")).planner.label == "offline"


def test_the_mask_check_budget_comes_from_the_environment(clean_env, segmenter):
    from pydantic import ValidationError

    from agent import Agent
    from agent.config import CHECK_BUDGET

    clean_env.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    clean_env.setenv("OPENAI_MODEL", "fake-vlm")
    assert Agent(segmenter=segmenter).planner.check_budget == CHECK_BUDGET
    clean_env.setenv("MEDSAM3_CHECK_BUDGET", "3")
    assert Agent(segmenter=segmenter).planner.check_budget == 3
    clean_env.setenv("MEDSAM3_CHECK_BUDGET", "-1")
    with pytest.raises(ValidationError, match="medsam3_check_budget"):
        Settings()


def test_run_command_with_a_base_url_alone_asks_for_a_model(tmp_path):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    env = {k: v for k, v in os.environ.items() if k not in ENV} | {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    done = subprocess.run([sys.executable, "-m", "agent.cli", "run", str(image), "find the polyps",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600, check=False)
    assert done.returncode == 2 and "needs a model name" in done.stderr, done.stderr[-2000:]


class ThresholdWatch:
    """Records the shared backend's own threshold while a per-run threshold is in use."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.seen: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.seen.append(self.backend.presence_threshold)


def test_presence_threshold_travels_with_the_run(segmenter):
    """A handle's threshold reaches the segment call; the shared backend's own never changes, even mid-call."""
    image = np.zeros((96, 96, 3), np.uint8)
    image[30:60, 30:60] = (200, 90, 80)
    own = segmenter.backend.presence_threshold
    watch = ThresholdWatch(segmenter.backend)
    thread = threading.Thread(target=watch.run, daemon=True)
    thread.start()
    try:
        strict = segmenter.handle(image, presence_threshold=1.01).segment(concept="polyp")
        lenient = segmenter.handle(image, presence_threshold=0.0).segment(concept="polyp")
    finally:
        watch.stop.set()
        thread.join()
    assert strict.instances == []  # nothing passes a gate above 1
    assert lenient.presence == strict.presence  # same model output, only the gate differs
    assert set(watch.seen) == {own} and segmenter.backend.presence_threshold == own
