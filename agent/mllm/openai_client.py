"""OpenAI-compatible chat completions (OpenAI, Gemini's compatible endpoint, vLLM, Ollama) via `openai`.

Configuration: arguments only; ``from_env(settings)`` fills them from ``agent.config.Settings``
(``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` / ``OPENAI_MODEL``, read once by whoever built the settings).
Retries with exponential backoff on 429 / 5xx / timeouts are the ``openai`` client's own
(``max_retries``); what still fails becomes one ``PlannerError`` naming the endpoint and cause.
With a ``recorder`` (``agent.mllm.recording``) every request and reply is also written to a recording.
"""

from __future__ import annotations

from typing import Any, Protocol

import openai
from openai import BaseModel
from openai.types.chat import ChatCompletion

from agent.config import Settings
from agent.errors import PlannerError
from agent.mllm.base import ChatClient, LLMReply, ToolsUnsupported, parse_native_call, parse_text_tool_calls


class ExchangeRecorder(Protocol):
    """Where a client writes each exchange (``agent.mllm.recording.Recorder``)."""

    def save(self, request: dict[str, Any], *, response: dict[str, Any] | None = None,
             error: PlannerError | None = None) -> object: ...


class OpenAIClient(ChatClient):
    recorder: ExchangeRecorder | None = None  # set by ``Recorder.attach``: every exchange is written to a recording

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 3,
        native_tools: bool = True,
        temperature: float = 0.0,
        max_tokens: int = 1024,
    ) -> None:
        self.base_url = (base_url or "").strip() or None
        self.model = (model or "").strip()
        if not self.model:
            raise ValueError("the OpenAI-compatible planner needs a model name: pass model= or set OPENAI_MODEL")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        key = api_key or "none"  # vLLM / Ollama need no key
        self.timeout = timeout
        self.max_retries = max_retries
        self.native_tools = native_tools
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout, max_retries=max_retries)

    @classmethod
    def from_env(cls, settings: Settings, **overrides: Any) -> OpenAIClient:
        """A client for the settings' endpoint, model and key; ``overrides`` (a run's flags) win."""
        return cls(**{**settings.llm_options(), **overrides})

    @property
    def where(self) -> str:
        return self.base_url or "api.openai.com"

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> LLMReply:
        use_tools = bool(tools) and self.native_tools
        request = self._request(messages, tools if use_tools else None)
        try:
            body = self._send(request)
        except PlannerError as exc:
            if isinstance(exc, ToolsUnsupported):  # servers started without a tool parser reject `tools`:
                self.native_tools = False  # the planner switches to the text protocol
            if self.recorder is not None:
                self.recorder.save(request, error=exc)
            raise
        if self.recorder is not None:
            self.recorder.save(request, response=body)
        # a live reply and a replayed one are read from the same JSON body, the same way
        return self._reply(ChatCompletion.construct(**body))

    def _request(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> dict[str, Any]:
        """The request's JSON body (what a recording stores and a replay matches): no key, no headers."""
        options: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature,
                                   "max_tokens": self.max_tokens}
        if tools:
            options["tools"] = tools
            options["tool_choice"] = "auto"
        return options

    def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        """The endpoint's reply to ``request`` as its JSON body; a failure for good is a ``PlannerError``."""
        try:
            response = self._create(request)
        except openai.BadRequestError as exc:
            if "tools" in request and "tool" in str(exc).lower():
                raise ToolsUnsupported(f"{self.where} does not accept native tool calls: {exc.message}") from exc
            raise PlannerError(f"{self.where} rejected the request (HTTP 400): {exc.message}") from exc
        return response.to_dict(mode="json") if isinstance(response, BaseModel) else {}

    def _create(self, options: dict[str, Any]) -> Any:
        tries = self.max_retries + 1
        try:
            return self._client.chat.completions.create(**options)
        except openai.APITimeoutError as exc:
            raise PlannerError(f"the LLM endpoint {self.where} did not answer within {self.timeout:g} s "
                               f"({tries} attempt(s))") from exc
        except openai.APIConnectionError as exc:
            raise PlannerError(f"cannot reach the LLM endpoint {self.where} ({tries} attempt(s)): {exc}") from exc
        except openai.AuthenticationError as exc:
            raise PlannerError(f"{self.where} refused the API key (HTTP 401); set OPENAI_API_KEY") from exc
        except openai.BadRequestError:
            raise
        except openai.APIStatusError as exc:
            raise PlannerError(f"the LLM endpoint {self.where} answered HTTP {exc.status_code} after {tries} "
                               f"attempt(s): {exc.message}") from exc

    def _reply(self, response: Any) -> LLMReply:
        choices = getattr(response, "choices", None) or []
        if not choices or getattr(choices[0], "message", None) is None:
            return LLMReply(text="", finish_reason="empty")  # the planner treats it as a malformed reply
        message = choices[0].message
        text = message.content or ""
        refusal = getattr(message, "refusal", None)
        refusal = refusal if isinstance(refusal, str) and refusal.strip() else None
        native = [
            parse_native_call(call.id, call.function.name, call.function.arguments)
            for call in (message.tool_calls or [])
            if getattr(call, "function", None) is not None
        ]
        if native:
            return LLMReply(text=text, tool_calls=native, native=True, finish_reason=choices[0].finish_reason,
                            refusal=refusal)
        return LLMReply(text=text, tool_calls=parse_text_tool_calls(text), native=False,
                        finish_reason=choices[0].finish_reason, refusal=refusal)
