"""Regenerate docs/agent.md's "what the MLLM receives" section and its pictures (docs/images/mllm_*.png).

One question on a synthetic drawn image (never shared data) runs through the real agent: the real
MLLM planner and the shipped MedSAM3-Lite segmenter, with a scripted chat client in place of a model
(its replies are fixed, so the pictures are the same on every run). Every request the planner sends is
written out: its messages as text, each image as a PNG (an image sent again is linked again, not
written twice). Run from the repository root:

    .venv/bin/python scripts/docs_pictures.py
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent import Agent
from agent.mllm.base import ChatClient, LLMReply, ToolCallRequest, decode_data_url
from agent.planners.mllm import MLLMPlanner

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "agent.md"
IMAGES = ROOT / "docs" / "images"
BEGIN, END = "<!-- mllm-rounds:begin (scripts/docs_pictures.py) -->", "<!-- mllm-rounds:end -->"
QUESTION = "Is there a polyp? Outline it."
POLYP_BOX = [236.0, 92.0, 344.0, 188.0]  # around the drawn polyp
FOLD_BOX = [40.0, 190.0, 150.0, 280.0]  # a patch of plain mucosa: the mask the check should reject


def synthetic_image() -> np.ndarray:
    """A drawn colonoscopy-like frame: shaded mucosa, a dark lumen, two folds and one raised pale polyp."""
    h, w = 320, 448
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    shade = 1.0 - 0.55 * np.hypot((xx - 120) / w, (yy - 110) / h)  # lit from the upper left
    image = np.stack([190 * shade, 92 * shade, 78 * shade], axis=-1)
    cv2.circle(image, (110, 95), 34, (40, 14, 12), -1)  # the lumen
    for y in (150, 235):
        cv2.ellipse(image, (200, y), (230, 26), 4, 180, 360, (150, 60, 52), 5)  # folds
    cv2.ellipse(image, (290, 140), (48, 40), 15, 0, 360, (226, 150, 128), -1)  # the polyp
    cv2.ellipse(image, (278, 128), (18, 12), 15, 0, 360, (245, 200, 185), -1)  # its highlight
    return cv2.GaussianBlur(np.clip(image, 0, 255).astype(np.uint8), (5, 5), 0)


class ScriptedModel(ChatClient):
    """A chat client that answers from a fixed script and keeps every request it was sent."""

    model = "docs-vlm"

    def __init__(self) -> None:
        self.requests: list[list[dict[str, Any]]] = []
        self.calls = iter([
            ("segment_geometry", {"boxes": [POLYP_BOX, FOLD_BOX], "concept": None}),
            ("examine_masks", {}),
            ("select_masks", {"ids": [1, 2], "answer": "Yes: one polyp, outlined."}),
        ])

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> LLMReply:
        self.requests.append(messages)
        text = messages[0]["content"][0]["text"] if isinstance(messages[0]["content"], list) else ""
        mask = re.search(r"mask #(\d+)", text)
        if mask:  # a per-mask check
            verdict = ('{"verdict": "accept", "reason": "the outline follows the raised pale lesion"}'
                       if mask.group(1) == "1" else
                       '{"verdict": "reject", "reason": "flat mucosa next to a fold, no polyp"}')
            return LLMReply(text=verdict, native=False, finish_reason="stop")
        name, arguments = next(self.calls)
        arguments = {k: v for k, v in arguments.items() if v is not None}
        call = ToolCallRequest(id=f"call_{len(self.requests)}", name=name, arguments=arguments)
        return LLMReply(tool_calls=[call], finish_reason="tool_calls")


class Pictures:
    """Writes each distinct image once, named by where it first appears."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def link(self, url: str, name: str) -> str:
        image = decode_data_url(url)
        key = hashlib.sha256(image.tobytes() + str(image.shape).encode()).hexdigest()
        if key not in self.names:
            self.names[key] = f"mllm_{name}.png"
            cv2.imwrite(str(IMAGES / self.names[key]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_PNG_COMPRESSION, 9])
        file = self.names[key]
        return f"![{file}](images/{file}) `{image.shape[1]}x{image.shape[0]}`"


def _fenced(text: str) -> str:
    return "```text\n" + text.replace("```", "'''") + "\n```"


def _message(message: dict[str, Any], pictures: Pictures, prefix: str, system_shown: bool) -> list[str]:
    role = message["role"]
    if role == "system":
        if system_shown:
            return ["**system**: the same system prompt as in request 1."]
        return ["**system**:", "<details><summary>the system prompt (click)</summary>", "",
                _fenced(message["content"]), "", "</details>"]
    content = message.get("content")
    out = [f"**{role}**" + (f" (for {message['tool_call_id']})" if role == "tool" else "") + ":"]
    parts = content if isinstance(content, list) else [{"type": "text", "text": content}] if content else []
    images = 0
    for part in parts:
        if part["type"] == "text":
            out.append(_fenced(part["text"]))
        else:
            images += 1
            out.append(pictures.link(part["image_url"]["url"], f"{prefix}_{images}"))
    for call in message.get("tool_calls") or []:
        out.append(_fenced(f"tool call {call['id']}: {call['function']['name']}({call['function']['arguments']})"))
    return out


def section(model: ScriptedModel, pictures: Pictures, answer: str) -> str:
    lines = [BEGIN, "", f"The question {QUESTION!r} on a drawn image (`scripts/docs_pictures.py` "
             "regenerates this section and its pictures; the model's replies are scripted, everything sent is the "
             "agent's own). Images are shown at the size sent.", ""]
    system_shown = False
    for n, messages in enumerate(model.requests, start=1):
        check = re.search(r"mask #(\d+)", json.dumps(messages[0].get("content"), default=str))
        title = f"per-mask check of #{check.group(1)} (no tools, no history)" if check and len(messages) == 1 \
            else "the planner's conversation (tool schemas sent alongside as `tools`)"
        lines += [f"#### Request {n}: {title}", ""]
        for message in messages:
            lines += _message(message, pictures, f"request{n}", system_shown)
            lines.append("")
            system_shown = system_shown or message["role"] == "system"
    lines += ["#### The answer", "", _fenced(answer), "", END]
    return "\n".join(lines)


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    for old in IMAGES.glob("mllm_*.png"):
        old.unlink()
    model = ScriptedModel()
    agent = Agent(planner=MLLMPlanner(model), segmenter="lite", max_rounds=2)
    result = agent.run(QUESTION, image=synthetic_image())
    text = DOC.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC} has no {BEGIN} ... {END} markers to fill")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    DOC.write_text(head + section(model, Pictures(), result.answer) + tail, encoding="utf-8")
    print(f"{len(model.requests)} requests; pictures in {IMAGES.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
