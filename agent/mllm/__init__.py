"""MLLM clients behind one small interface (``base.ChatClient``): OpenAI-compatible chat completions
(``openai_client.OpenAIClient``), recording and replay (``recording``), the image frame sent (``frame``).

Nothing is imported here: the offline planner needs none of it, and the ``openai`` package alone takes ~2 s to
import on a 2-core machine; import the module you use.
"""
