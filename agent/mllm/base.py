"""The chat-client interface planners use, and helpers shared by clients: images as data URLs,
and tool calls written in a reply's text.

Text calls come in the forms real models write them: our protocol's ``<tool>{"name": ...,
"parameters": {...}}</tool>``, Hermes / Qwen's ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
(vLLM without a tool parser passes it through as content), a fenced ```json block, or one bare JSON
object in prose. A block cut off mid-JSON is a call with an error, never silently no call.
"""

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

_TOOL_TAG = re.compile(r"<(tool|tool_call|function_call)>\s*(.*?)\s*(?:</\1>|$)", re.DOTALL)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*(?:```|$)", re.DOTALL)
_NAMED = re.compile(r'\{\s*"name"\s*:')  # where a bare JSON tool call starts


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


def _text_call(body: str, where: str) -> ToolCallRequest:
    """One text block as a call: ``{"name": ..., "parameters" | "arguments": {...}}``."""
    body = body.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        return ToolCallRequest(error=f"the {where} is not valid JSON ({exc}; cut off?): {body[:120]}")
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return ToolCallRequest(error=f'a {where} needs {{"name": "...", "parameters": {{...}}}}')
    arguments, error = _arguments(value.get("parameters", value.get("arguments", {})))
    return ToolCallRequest(name=value["name"], arguments=arguments, error=error)


def _bare_calls(text: str) -> list[ToolCallRequest]:
    """JSON objects with a "name" in prose (fenced or not); one that does not parse is a call with an error."""
    blocks = [b for b in _FENCE.findall(text) if _NAMED.match(b)]
    if blocks:
        return [_text_call(b, "```json block") for b in blocks]
    decoder = json.JSONDecoder()
    calls: list[tuple[ToolCallRequest, int]] = []  # each with where its JSON ended
    for match in _NAMED.finditer(text):
        if calls and match.start() < calls[-1][1]:
            continue  # inside the object just read
        try:
            value, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            calls.append((_text_call(text[match.start():], "tool call in the reply"), len(text)))
            break
        if isinstance(value, dict) and ("parameters" in value or "arguments" in value):
            calls.append((_text_call(json.dumps(value), "tool call in the reply"), end))
    return [call for call, _ in calls]


def parse_text_tool_calls(text: str) -> list[ToolCallRequest]:
    """Tool calls written in a reply's text (the forms in this module's docstring), in order."""
    text = text or ""
    tagged = [_text_call(body, f"<{tag}> block") for tag, body in _TOOL_TAG.findall(text)]
    return tagged or _bare_calls(text)
