"""The agent's settings from the environment, read once and then passed to what needs them.

``Settings()`` reads ``OPENAI_BASE_URL``, ``OPENAI_MODEL``, ``OPENAI_API_KEY``,
``MEDSAM3_COORDINATES`` (how the MLLM's boxes read: auto, pixels or norm1000; see
``agent/mllm/frame.py``), ``MEDSAM3_CHECK_BUDGET`` (the per-mask check requests, ``examine_masks``, an
MLLM run may send; default ``CHECK_BUDGET``) and ``MEDSAM3_UI_AUTH``; the CLI, the UI and ``Agent`` build
one and hand it down (nothing below them reads these variables). The segmenter layer's own variables
(``MEDSAM3_SEGMENTER_URL`` / ``MEDSAM3_SEGMENTER_TOKEN``, ``MEDSAM3_SAM3_CONFIG`` / ``MEDSAM3_SAM3_MODEL``) are read in
``segmenter/``, which imports nothing from ``agent``.

The one "auto" planner rule (``Settings.planner_for``): the OpenAI-compatible planner when an
endpoint base URL *or* a model name is given (flag or environment), else the offline planner.
A model name alone means OpenAI's own endpoint; a base URL alone fails with "needs a model name".
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PlannerName = Literal["offline", "openai", "replay"]  # replay: an MLLM run answered from its recording
CoordinateChoice = Literal["auto", "pixels", "norm1000"]  # agent.mllm.frame's conventions, "auto" by model
CHECK_BUDGET = 24  # per-mask check requests per MLLM run (examine_masks), by default


class Settings(BaseSettings):
    """One field per environment variable, named after it (``Settings(openai_model=...)`` for tests)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)

    openai_base_url: str = ""
    openai_model: str = ""
    openai_api_key: SecretStr | None = None
    medsam3_coordinates: CoordinateChoice = "auto"
    medsam3_check_budget: int = Field(CHECK_BUDGET, ge=0, le=1000)
    medsam3_ui_auth: SecretStr | None = None

    @field_validator("openai_api_key", "medsam3_ui_auth", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    def planner_for(self, choice: str = "auto", *, base_url: str | None = None,
                    model: str | None = None) -> PlannerName:
        """The planner a run uses: ``choice`` unless it is "auto", then the rule in this module's docstring.

        ``base_url`` / ``model`` are the run's own (flags, llm options); unset ones fall back to the environment.
        """
        if choice in ("offline", "openai", "replay"):
            return choice  # type: ignore[return-value]  # narrowed by the test above
        if choice != "auto":
            raise ValueError(f"unknown planner {choice!r}; choose auto, offline, openai or replay")
        endpoint = (base_url or self.openai_base_url).strip() or (model or self.openai_model).strip()
        return "openai" if endpoint else "offline"

    def llm_options(self) -> dict[str, Any]:
        """Keyword arguments for ``OpenAIClient``: the endpoint, model and key this environment gives."""
        key = self.openai_api_key.get_secret_value() if self.openai_api_key else None
        return {"base_url": self.openai_base_url or None, "model": self.openai_model or None, "api_key": key}
