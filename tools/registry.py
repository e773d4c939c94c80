"""The tools a planner may call, by name: argument model, kind, the function that runs it, and its
description (from prompts/)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from prompts import load_prompt
from tools.answer import report_no_mask, select_masks
from tools.context import ToolContext
from tools.examine import examine_masks
from tools.measure_tool import measure_masks
from tools.schemas import (
    ExamineMasksArgs,
    MeasureArgs,
    ReportNoMaskArgs,
    SegmentConceptArgs,
    SegmentGeometryArgs,
    SelectMasksArgs,
    ToolCall,
    ToolError,
    ToolKind,
    ToolResult,
)
from tools.segment import segment_concept, segment_geometry

ToolFunction = Callable[[Any, ToolContext, ToolCall], ToolResult]  # (validated arguments, context, the call)


class ToolSpec(BaseModel):
    name: str
    args_model: type[BaseModel]
    kind: ToolKind
    run: ToolFunction

    @property
    def description(self) -> str:
        return load_prompt(f"tool_{self.name}")

    def openai_schema(self) -> dict:
        schema = self.args_model.model_json_schema()
        schema.pop("title", None)
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": schema}}


TOOLS: dict[str, ToolSpec] = {
    spec.name: spec
    for spec in (
        ToolSpec(name="segment_concept", args_model=SegmentConceptArgs, kind="segment", run=segment_concept),
        ToolSpec(name="segment_geometry", args_model=SegmentGeometryArgs, kind="segment", run=segment_geometry),
        ToolSpec(name="examine_masks", args_model=ExamineMasksArgs, kind="examine", run=examine_masks),
        # "examine" kind: it reads masks without changing them, so it follows examine's batch rule
        ToolSpec(name="measure", args_model=MeasureArgs, kind="examine", run=measure_masks),
        ToolSpec(name="select_masks", args_model=SelectMasksArgs, kind="finish", run=select_masks),
        ToolSpec(name="report_no_mask", args_model=ReportNoMaskArgs, kind="finish", run=report_no_mask),
    )
}


def parse_call(name: str, arguments: dict) -> tuple[ToolSpec, BaseModel]:
    """Validate a tool call; a ``ToolError`` says what is wrong in words a planner can act on."""
    spec = TOOLS.get(name)
    if spec is None:
        raise ToolError(f"unknown tool {name!r}; available tools: {', '.join(TOOLS)}")
    if not isinstance(arguments, dict):
        raise ToolError(f"{name}: arguments must be a JSON object, got {type(arguments).__name__}")
    try:
        return spec, spec.args_model.model_validate(arguments)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors())
        raise ToolError(f"{name}: invalid arguments ({problems})") from exc


def openai_tools() -> list[dict]:
    return [spec.openai_schema() for spec in TOOLS.values()]


def text_tool_list() -> str:
    return "\n".join(
        f"- {spec.name}: {spec.description} Parameters (JSON schema): "
        f"{json.dumps(spec.openai_schema()['function']['parameters'])}"
        for spec in TOOLS.values()
    )
