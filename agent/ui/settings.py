"""What the UI's settings panel holds, validated at the boundary, and where the API key comes from.

The key comes from the environment only (``agent.config.Settings``, read once at launch): the UI
shows whether it is set, never its value, and sends it only to an endpoint the operator chose
(see ``key_for``).
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from segmenter import backends
from segmenter.windows import parse_window

KEY_ENV = "OPENAI_API_KEY"
PLANNERS = ("offline", "openai")
BACKENDS = tuple(backends.BACKENDS)  # the segmenter's name table: one list of names
AUTO_WINDOW = "auto"


class UiSettings(BaseModel):
    """One turn's settings; equal settings share one Agent (and so its threads)."""

    model_config = {"frozen": True}

    planner: Literal["offline", "openai"] = "offline"
    base_url: str = Field("", max_length=2000)
    model: str = Field("", max_length=200)
    backend: str = "lite"
    max_rounds: int = Field(3, ge=1, le=10)
    # None: each concept's presence threshold calibrated for the segmenter's weights (as the CLI and API use);
    # a number: one presence threshold for every concept
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)
    # how a DICOM / NIfTI upload's grey values are shown (and segmented): "auto" (the loader's rule: a CT DICOM's
    # own window, else the abdomen preset; other DICOM and NIfTI: the percentile window), a preset or "level,width"
    window: str = Field(AUTO_WINDOW, max_length=100)
    # set at launch, not in the panel: one MLLM request may take timeout x (retries + 1) at most
    timeout: float = Field(60.0, gt=0, le=600)
    retries: int = Field(1, ge=0, le=5)

    @field_validator("base_url", "model")
    @classmethod
    def _strip(cls, value: str | None) -> str:
        return (value or "").strip()

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in BACKENDS:
            raise ValueError(f"segmenter backend must be one of {', '.join(BACKENDS)}")  # not echoed: any text
        return value

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, value: object) -> object:
        """The window as one canonical spec ("auto", also for empty or None; "lung"; "-600,1500"), read by
        segmenter.windows' parser; a bad value's error names it and lists what is accepted."""
        if value is None or isinstance(value, str) and value.strip().lower() in ("", AUTO_WINDOW):
            return AUTO_WINDOW
        if not isinstance(value, str) or len(value) > 100:
            return value  # pydantic's own "should be a valid string" / "at most 100 characters"
        window = parse_window(value)  # WindowError is a ValueError: pydantic reports it for the field
        return window.name if window.name != "custom" else f"{window.center:g},{window.width:g}"

    def load_window(self) -> str | None:
        """What the loader takes as ``window``: None for "auto" (its own rule), else the spec."""
        return None if self.window == AUTO_WINDOW else self.window

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("endpoint base URL must start with http:// or https://")  # not echoed: any text
        return value.rstrip("/")

    def describe(self) -> str:
        planner = "offline planner" if self.planner == "offline" else f"{self.model or '?'} at {self.base_url or '?'}"
        gate = ("calibrated presence thresholds" if self.score_threshold is None
                else f"score threshold {self.score_threshold:.2f}")
        window = "" if self.window == AUTO_WINDOW else f" · window {self.window}"
        return f"{planner} · segmenter {self.backend} · up to {self.max_rounds} round(s) · {gate}{window}"


def key_status(key_set: bool) -> str:
    """What the settings panel says about the key: whether it is set, never the value."""
    if key_set:
        return f"API key: read from `{KEY_ENV}` (set)."
    return f"API key: `{KEY_ENV}` is not set; endpoints that need no key (vLLM, Ollama) still work."


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def key_for(base_url: str, key: str | None, *, launch_base_url: str, host: str) -> str | None:
    """The key (the operator's ``key``, from the environment) to send to ``base_url``, or None.

    A UI reachable from other machines must not let a visitor point the planner at their own
    server and receive the operator's key, so there the key only goes to the endpoint set at
    launch. On a loopback-only UI the visitor is the operator, and any endpoint gets it.
    """
    if not key:
        return None
    if is_loopback(host) or (launch_base_url and base_url.rstrip("/") == launch_base_url.rstrip("/")):
        return key
    return None
