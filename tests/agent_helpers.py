"""Helpers for the agent tests (importable from subprocesses too, so not in conftest).

* ``FakeOpenAI``: a local OpenAI-compatible chat-completions server on 127.0.0.1 (stdlib
  http.server in a thread) that plays a script of replies and records every request. The reply
  builders below speak as real models do: native tool calls, Hermes / Qwen ``<tool_call>`` tags in
  the content, JSON in prose or a fenced block, calls cut off at the token limit, refusals in prose,
  and ``looking_model``, which finds a bright object in the image it was sent and answers a box in
  its own frame (pixels of the image as sent, or Qwen2-VL / Gemini's 0-1000); ``mask_checker`` answers
  the per-mask check requests of ``examine_masks`` by the mask id each names.
* ``OracleBackend``: a segmenter backend that answers from the shared data's ground-truth masks
  (connected components of the named concept, presence high where the mask is non-empty). It
  makes planner-logic tests (follow-ups, negatives, thread resume) deterministic; the real model
  is exercised by the other tests.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from typing_extensions import Self

from segmenter.base import SegmenterBackend, image_key
from segmenter.catalog import load_catalog
from segmenter.study_io import load_image
from segmenter.types import Instance, Prompt, SegmentationResult

# --- fake OpenAI-compatible server -----------------------------------------------------------------

Reply = dict[str, Any]  # {"status": int, "body": dict, "delay": float, "headers": dict}
Step = Callable[[dict], Reply] | Reply


def completion(message: dict, finish_reason: str = "stop") -> Reply:
    return {"status": 200, "body": {
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": "fake-vlm",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }}


def tool_reply(name: str, arguments: dict | str, call_id: str = "call_1", text: str | None = None) -> Reply:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return completion({"content": text, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}]}, "tool_calls")


def text_reply(text: str) -> Reply:
    return completion({"content": text})


def call_json(name: str, arguments: dict, key: str = "arguments") -> str:
    return json.dumps({"name": name, key: arguments})


def tagged_reply(name: str, arguments: dict, prose: str = "Let me look.") -> Reply:
    """A Hermes / Qwen-style call in the content (vLLM without a tool parser passes it through as text)."""
    return text_reply(f"{prose}\n<tool_call>\n{call_json(name, arguments)}\n</tool_call>")


def fenced_reply(name: str, arguments: dict) -> Reply:
    """A call as a fenced JSON block with prose around it."""
    return text_reply(f"I can see the target. I will call this tool:\n```json\n{call_json(name, arguments)}\n```\n"
                      "Then I will check the result.")


def bare_json_reply(name: str, arguments: dict) -> Reply:
    """A call as one bare JSON object in a sentence."""
    return text_reply(f"Next step: {call_json(name, arguments, key='parameters')} - that should find it.")


def truncated_reply(name: str, arguments: dict, keep: float = 0.6) -> Reply:
    """A text call cut off at the token limit (finish_reason "length"), as a model with a small max_tokens sends."""
    text = call_json(name, arguments)
    return completion({"content": f"<tool_call>\n{text[: int(len(text) * keep)]}"}, "length")


def refusal_text_reply(text: str = "I'm sorry, but I can't help with analysing medical images.") -> Reply:
    """A refusal in prose (no ``refusal`` field), as open models write it."""
    return text_reply(text)


def bright_box(image: np.ndarray, level: int = 200) -> list[float]:
    """The bounding box [x0, y0, x1, y1] (pixel edges) of the pixels brighter than ``level`` in every channel."""
    ys, xs = np.nonzero((np.asarray(image)[..., :3] > level).all(axis=-1))
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def looking_model(convention: str, call_id: str = "call_look") -> Callable[[dict], Reply]:
    """A model that looks at the image it was sent, finds the bright object and answers a ``segment_geometry``
    box in its own frame: ``pixels`` of the image as sent, or ``norm1000`` (0-1000 on both axes)."""

    def step(body: dict) -> Reply:
        from agent.mllm.base import decode_data_url

        urls = [p["image_url"]["url"] for m in body["messages"] if isinstance(m.get("content"), list)
                for p in m["content"] if p.get("type") == "image_url"]
        image = decode_data_url(urls[-1])
        box = bright_box(image)
        if convention == "norm1000":
            h, w = image.shape[:2]
            box = [round(box[0] * 1000 / w), round(box[1] * 1000 / h), round(box[2] * 1000 / w),
                   round(box[3] * 1000 / h)]
        return tool_reply("segment_geometry", {"boxes": [box], "concept": "lesion"}, call_id=call_id)

    return step


def ellipse_image(width: int = 3000, height: int = 1800) -> tuple[np.ndarray, list[float]]:
    """A dark, textured non-square image with one bright ellipse off centre, and the ellipse's box."""
    rng = np.random.default_rng(7)
    image = rng.integers(30, 70, size=(height, width, 3), dtype=np.uint8)
    cx, cy, ax, ay = int(width * 0.62), int(height * 0.38), int(width * 0.09), int(height * 0.12)
    cv2.ellipse(image, (cx, cy), (ax, ay), 0, 0, 360, (235, 225, 215), thickness=-1)
    return image, bright_box(image)


def error_reply(status: int, message: str = "server error", headers: dict | None = None) -> Reply:
    return {"status": status, "body": {"error": {"message": message, "type": "server_error"}},
            "headers": headers or {}}


def bad_arguments_reply(body: dict) -> Reply:
    """A native tool call whose arguments were cut off mid-JSON (as a model hitting its token limit sends)."""
    return tool_reply("segment_concept", '{"concept": ', call_id=f"call_bad{len(body['messages'])}")


class FakeOpenAI:
    """Plays ``script`` (one step per request; a step is a reply or a function of the request body)."""

    def __init__(self, script: list[Step]) -> None:
        self.script = list(script)
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with fake._lock:
                    fake.requests.append({"path": self.path, "body": body})
                    step = fake.script.pop(0) if fake.script else error_reply(500, "fake server: script exhausted")
                reply = step(body) if callable(step) else step
                time.sleep(reply.get("delay", 0))
                data = json.dumps(reply["body"]).encode()
                try:
                    self.send_response(reply["status"])
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in reply.get("headers", {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def images(self, index: int) -> list[np.ndarray]:
        """The images (decoded from data URLs) in request ``index``, in message order."""
        from agent.mllm.base import decode_data_url

        out = []
        for message in self.requests[index]["body"]["messages"]:
            content = message.get("content")
            if isinstance(content, list):
                out += [decode_data_url(p["image_url"]["url"]) for p in content if p.get("type") == "image_url"]
        return out


def tool_messages(server: FakeOpenAI, index: int) -> list[dict]:
    """The tool messages (native protocol) of request ``index``."""
    return [m for m in server.requests[index]["body"]["messages"] if m["role"] == "tool"]


def polyp_case() -> tuple[np.ndarray, list[float]]:
    """A real Kvasir val image and a box around its polyp; skips where the shared data is absent: the scripted
    MLLM runs need a mask, and the 'polyp' presence gate finds none on a drawn image (box or not)."""
    import pytest
    from conftest import DATA, val_rows  # pytest puts tests/ on sys.path; this helper is for tests only

    if not (DATA / "kvasir_seg" / "manifest.jsonl").exists():
        pytest.skip(f"needs a real polyp image: shared data not found at {DATA}")
    row = val_rows("kvasir_seg", limit=1)[0]
    image = load_image(row["image"])
    ys, xs = np.nonzero(read_mask(row["masks"]["polyp"]))
    return image, [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def openai_agent(server: FakeOpenAI, segmenter: Any, **client_options: Any):
    """An Agent whose MLLM planner talks to ``server`` through the real `openai` client (no retries by default);
    ``model`` (default "fake-vlm") and ``coordinate_convention`` may be given too."""
    from agent import Agent
    from agent.mllm.openai_client import OpenAIClient

    max_rounds = client_options.pop("max_rounds", 2)
    model = client_options.pop("model", "fake-vlm")
    convention = client_options.pop("coordinate_convention", None)
    check_budget = client_options.pop("check_budget", None)
    options = {"timeout": 10.0, "max_retries": 0, **client_options}
    client = OpenAIClient(base_url=server.base_url, model=model, api_key="test-key", **options)
    if check_budget is not None:  # the planner built here, with its per-mask check budget
        from agent.planners.mllm import MLLMPlanner

        planner = MLLMPlanner(client, check_budget=check_budget, coordinate_convention=convention or "auto")
        return Agent(planner=planner, segmenter=segmenter, max_rounds=max_rounds)
    return Agent(planner=client, segmenter=segmenter, max_rounds=max_rounds, coordinate_convention=convention)


def mask_checker(verdicts: dict[int, str]) -> Callable[[dict], Reply]:
    """A model answering a per-mask check request: the reply text given for the mask id the request names."""

    def step(body: dict) -> Reply:
        text = body["messages"][0]["content"][0]["text"]
        return text_reply(verdicts[int(re.search(r"mask #(\d+)", text).group(1))])

    return step


# --- an oracle segmenter over ground-truth masks ------------------------------------------------------


def read_mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L")) > 127


class OracleBackend(SegmenterBackend):
    """Ground truth as a segmenter: ``cases`` maps an image path to {concept: mask path}."""

    name = "oracle"

    def __init__(self, cases: dict[str, dict[str, str]]) -> None:
        self.catalog = load_catalog()
        self._truth: dict[str, dict[str, np.ndarray]] = {}
        for image_path, masks in cases.items():
            self._truth[image_key(load_image(image_path))] = {c: read_mask(Path(p)) for c, p in masks.items()}
        self._current: str | None = None
        self._shape: tuple[int, int] = (0, 0)
        self.prompts: list[Prompt] = []

    def set_image(self, image: np.ndarray) -> str:
        self._current = image_key(image)
        self._shape = image.shape[:2]
        return self._current

    def concepts(self) -> list[str]:
        return self.catalog.names

    def segment(self, prompt: Prompt) -> SegmentationResult:
        self.prompts.append(prompt)
        truth = self._truth.get(self._current or "", {})
        target = np.zeros(self._shape, dtype=bool)
        if prompt.concept is not None:
            found = self.catalog.get(prompt.concept)
            target = truth.get(found.name if found else prompt.concept, target)
        else:
            for mask in truth.values():
                target = target | mask
        if prompt.boxes:
            clipped = np.zeros_like(target)
            for box in prompt.boxes:
                x0, y0, x1, y1 = (round(v) for v in box.as_list())
                clipped[y0:y1, x0:x1] = target[y0:y1, x0:x1]
            target = clipped
        count, labels = cv2.connectedComponents(target.astype(np.uint8))
        instances = [Instance.from_mask(labels == k, 0.9) for k in range(1, count) if (labels == k).sum() >= 16]
        instances.sort(key=lambda inst: -inst.area)
        presence = 0.95 if instances else 0.05
        return SegmentationResult(prompt=prompt, instances=instances, presence=presence, image_size=self._shape,
                                  backend=self.name)
