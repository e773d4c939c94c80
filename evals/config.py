"""``EvalConfig``: one benchmark run's settings, shared by the runner, its executors and its identity.

It holds no secret: ``api_key_env`` names the environment variable the key is read from, in each
process that builds an agent, so the key never reaches argv, ``run.json`` or a Ray task.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from evals.modes import MODES, BoxStrategy

Executor = Literal["local", "ray"]
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_SLICES = re.compile(r"target|\d{1,6}(:\d{0,6})?|:\d{1,6}")


class EvalConfig(BaseModel):
    data: list[Path] = Field(default_factory=list)
    questions: Path | None = None
    split: str | None = "val"
    modes: list[str] = Field(default_factory=lambda: ["direct"])
    out: Path
    limit: int | None = None  # cases per dataset (and source)
    workers: int = 1  # processes (local) or Ray actors, each with its own segmenter
    concurrency: int = 1  # questions at once per process, in threads sharing its segmenter
    executor: Executor = "local"
    address: str | None = None  # Ray cluster address (ray.init's); None: RAY_ADDRESS or a local instance
    datasets: list[str] | None = None
    concepts: list[str] | None = None
    image_root: Path | None = None  # COCO file_name root
    backend: str = "lite"
    weights: Path | None = None
    presence_threshold: float | None = None  # lite: None = each concept's calibrated threshold (else 0.5)
    refine: str | None = None  # lite: how concept masks are drawn (segmenter/lite/refine.py); None: MEDSAM3_REFINE
    shift: str | None = None  # simulated acquisition shift of every 2D image (evals/shift.py); None: the images as read
    box_strategy: BoxStrategy = "component"
    box_text: bool = True  # box mode sends the concept with the boxes (T+I); False: boxes alone
    planner: str | None = None
    model: str | None = None  # the MLLM planner's model (else OPENAI_MODEL)
    base_url: str | None = None  # its OpenAI-compatible endpoint (else OPENAI_BASE_URL, else OpenAI's)
    api_key_env: str | None = None  # the environment variable holding its key (else OPENAI_API_KEY)
    record: Path | None = None  # write every MLLM request and reply here (agent.mllm.recording)
    replay: Path | None = None  # answer the agent's MLLM requests from this recording (planner "replay")
    max_rounds: int | None = None
    hd95: bool = True
    slices: str | None = None  # volumes: "START:END" or "target" (the labels' slice span); None: every slice
    save_masks: bool = False
    seed: int = 0
    fresh: bool = False
    command: str = ""

    @field_validator("modes")
    @classmethod
    def _known_modes(cls, modes: list[str]) -> list[str]:
        unknown = [m for m in modes if m not in MODES]
        if unknown or not modes:
            raise ValueError(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
        return list(dict.fromkeys(modes))

    @field_validator("data")
    @classmethod
    def _absolute(cls, paths: list[Path]) -> list[Path]:
        return [Path(p).resolve() for p in paths]  # records name images by absolute path, whatever the cwd

    @field_validator("record", "replay")
    @classmethod
    def _absolute_folder(cls, path: Path | None) -> Path | None:
        return None if path is None else Path(path).resolve()  # the same folder in every process

    @field_validator("workers", "concurrency")
    @classmethod
    def _positive(cls, value: int, info) -> int:
        if value < 1:
            raise ValueError(f"--{info.field_name} must be at least 1")
        return value

    @field_validator("model", "base_url", "api_key_env")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if isinstance(value, str) else value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError("--api-key-env takes the name of an environment variable (letters, digits, _), "
                             "not the key itself")
        return value

    @field_validator("slices")
    @classmethod
    def _slice_spec(cls, value: str | None) -> str | None:
        if value is not None and not _SLICES.fullmatch(value.strip()):
            raise ValueError("--slices takes START:END (e.g. 40:120, end exclusive), one index, or 'target' "
                             "(the slices where the labels are)")
        return None if value is None else value.strip()

    @field_validator("shift")
    @classmethod
    def _known_shift(cls, value: str | None) -> str | None:
        from evals.shift import SHIFTS

        if value is not None and value not in SHIFTS:
            raise ValueError(f"--shift {value[:40]!r}: choose from {', '.join(SHIFTS)}")
        return value

    @model_validator(mode="after")
    def _refine_setting(self) -> EvalConfig:
        """Resolved here, once (MEDSAM3_REFINE read in this process), so every worker draws alike."""
        if self.backend == "lite":
            from segmenter.lite.refine import refine_choice

            self.refine = refine_choice(self.refine)
        elif self.refine is not None:
            raise ValueError(f"--refine applies to the lite backend, not {self.backend}")
        return self

    @model_validator(mode="after")
    def _llm_options_need_an_mllm(self) -> EvalConfig:
        given = [flag for flag, value in (("--model", self.model), ("--base-url", self.base_url),
                                          ("--api-key-env", self.api_key_env)) if value]
        if given and self.planner in ("offline", "replay"):
            raise ValueError(f"{', '.join(given)} configure the openai planner, not --planner {self.planner}")
        self._check_recording()
        if self.concurrency > 1 and self.workers > 1 and self.executor == "local":
            raise ValueError("--concurrency with --workers > 1 needs --executor ray (each actor then runs "
                             "--concurrency questions at once); locally use one or the other")
        if self.address is not None and self.executor != "ray":
            raise ValueError("--address is the Ray cluster's: give it with --executor ray")
        return self

    def _check_recording(self) -> None:
        """--replay DIR goes with --planner replay (set when no planner is given); --record with an MLLM."""
        if self.replay is not None and self.planner is None:
            self.planner = "replay"
        if (self.planner == "replay") != (self.replay is not None):
            raise ValueError("--planner replay and --replay DIR go together")
        if self.record is not None and self.planner in ("offline", "replay"):
            raise ValueError(f"--record writes the openai planner's requests; --planner {self.planner} sends none")
        if (self.record or self.replay) and "agent" not in self.modes:
            raise ValueError("--record and --replay apply to --mode agent (the other modes ask no MLLM)")
