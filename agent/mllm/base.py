"""The chat-client interface planners use, and helpers shared by clients: images as data URLs,
and the text fallback for tool calls (``<tool>{"name": ..., "parameters": {...}}</tool>``)."""

from __future__ import annotations

import base64
import io
import json
import re
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from agent.errors import PlannerError

_TOOL_TAG = re.compile(r"<tool>\s*(.*?)\s*(?:</tool>|$)", re.DOTALL)


class ToolsUnsupported(PlannerError):
    """The endpoint rejected native tools; the client has switched ``native_tools`` off."""


class ToolCallRequest(BaseModel):
    """A tool call as the model wrote it; ``error`` is set when it could not be read."""

    id: str | None = None  # native calls only
    name: str = ""
    arguments: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class LLMReply(BaseModel):
    text: str = ""
    tool_calls: list[ToolCallRequest] = Field(default_factory=list)
    native: bool = True  # the calls came as native tool calls (not parsed from text)
    finish_reason: str | None = None
    refusal: str | None = None  # the model declined (OpenAI's ``message.refusal``)


class ChatClient(ABC):
    """Sends chat messages (OpenAI format, images as data URLs) and returns the reply."""

    model: str = "model"
    native_tools: bool = True  # False: the tools are described in the prompt and parsed from text

    @abstractmethod
    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> LLMReply:
        """One chat completion; raises ``PlannerError`` when the endpoint fails for good."""


def image_data_url(image: np.ndarray) -> str:
    """PNG (lossless, so what the model sees is exactly the overlay) as a base64 data URL."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_data_url(url: str) -> np.ndarray:
    """The inverse of ``image_data_url`` (tests and fake servers use it)."""
    if not url.startswith("data:image/") or ";base64," not in url:
        raise ValueError(f"not a base64 image data URL: {url[:40]}")
    data = base64.b64decode(url.split(";base64,", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _arguments(raw: Any) -> tuple[dict[str, Any], str | None]:
    if raw is None or raw == "":
        return {}, None
    if isinstance(raw, dict):
        return raw, None
    try:
        value = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as exc:
        return {}, f"arguments are not valid JSON ({exc}): {str(raw)[:120]}"
    if not isinstance(value, dict):
        return {}, f"arguments must be a JSON object, got {type(value).__name__}"
    return value, None


def parse_native_call(call_id: str | None, name: str | None, raw_arguments: Any) -> ToolCallRequest:
    arguments, error = _arguments(raw_arguments)
    return ToolCallRequest(id=call_id, name=name or "", arguments=arguments, error=error)


def parse_text_tool_calls(text: str) -> list[ToolCallRequest]:
    """Tool calls written as ``<tool>{"name": ..., "parameters": {...}}</tool>`` in a reply's text."""
    calls = []
    for body in _TOOL_TAG.findall(text or ""):
        body = body.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
        try:
            value = json.loads(body)
        except json.JSONDecodeError as exc:
            calls.append(ToolCallRequest(error=f"the <tool> block is not valid JSON ({exc}): {body[:120]}"))
            continue
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            calls.append(ToolCallRequest(error='a <tool> block needs {"name": "...", "parameters": {...}}'))
            continue
        arguments, error = _arguments(value.get("parameters", value.get("arguments", {})))
        calls.append(ToolCallRequest(name=value["name"], arguments=arguments, error=error))
    return calls
