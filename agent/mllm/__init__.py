"""MLLM clients behind one small interface (``ChatClient``): OpenAI-compatible chat completions."""

from agent.mllm.base import ChatClient, LLMReply, ToolCallRequest, image_data_url, parse_text_tool_calls
from agent.mllm.openai_client import OpenAIClient

__all__ = ["ChatClient", "LLMReply", "OpenAIClient", "ToolCallRequest", "image_data_url", "parse_text_tool_calls"]
