"""Turn the agent's step events into chat messages, and a result into the legend and the final overlay.

Pure functions over numpy and plain dicts (no gradio import), so they are tested directly.
Chat messages use Gradio's "messages" format: ``{"role", "content", "metadata"}``, where a
``metadata.title`` makes a collapsible step and image content is ``{"path": ...}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from segmenter.overlay import render_overlay

if TYPE_CHECKING:
    from agent.results import AgentResult
    from segmenter.types import Instance

LEGEND_HEADERS = ["#", "concept", "instance", "score", "area (px)", "area (%)"]

# plain words, no emoji: not every browser (nor headless Chromium) has an emoji font
_TITLES = {
    "plan": "Plan",
    "tool_call": "Tool call",
    "tool_result": "Tool result",
    "verdict": "Verdict",
}


def save_png(image: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path)
    return path


def _tool_title(event: Any) -> str:
    data = getattr(event, "data", None) or {}
    name = data.get("name") or data.get("tool") or getattr(event, "node", "") or "tool"
    return f"Tool: {name}"


class Transcript:
    """The assistant's messages for one turn, built up event by event.

    A tool call opens a step with a spinner; its result closes it (status "done", duration).
    Overlays are written as PNGs under ``image_dir`` and shown inline.
    """

    def __init__(self, image_dir: Path) -> None:
        self.image_dir = image_dir
        self.messages: list[dict] = []
        self._open_tool: int | None = None
        self._images = 0

    def _thought(self, title: str, text: str, *, status: str | None = "done", ms: float | None = None) -> dict:
        metadata: dict[str, Any] = {"title": title}
        if status:
            metadata["status"] = status
        if ms:
            metadata["duration"] = round(ms / 1000, 2)
        message = {"role": "assistant", "content": text or " ", "metadata": metadata}
        self.messages.append(message)
        return message

    def note(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})

    def error(self, text: str) -> None:
        self._close_tool()
        self.messages.append({"role": "assistant", "content": f"**Error:** {text}"})

    def image(self, image: np.ndarray, caption: str = "") -> Path:
        self._images += 1
        path = save_png(image, self.image_dir / f"step_{self._images:02d}.png")
        content: list = [{"path": str(path), "mime_type": "image/png", "alt_text": caption or "overlay"}]
        if caption:
            content.append(caption)
        self.messages.append({"role": "assistant", "content": content})
        return path

    def _close_tool(self, extra: str = "", ms: float | None = None) -> None:
        if self._open_tool is None:
            return
        message = self.messages[self._open_tool]
        if extra:
            message["content"] = f"{message['content'].rstrip()}\n\n{extra}".strip()
        message["metadata"]["status"] = "done"
        if ms:
            message["metadata"]["duration"] = round(ms / 1000, 2)
        self._open_tool = None

    def add(self, event: Any) -> None:
        kind = getattr(event, "kind", "")
        text = (getattr(event, "text", "") or "").strip()
        ms = getattr(event, "ms", None)
        image = getattr(event, "image", None)
        if kind == "tool_call":
            self._close_tool()
            self._thought(_tool_title(event), text, status="pending")
            self._open_tool = len(self.messages) - 1
        elif kind == "tool_result":
            if self._open_tool is not None:
                self._close_tool(text, ms)
            else:
                self._thought(_TITLES["tool_result"], text, ms=ms)
        elif kind == "overlay":
            self._close_tool()
            if image is not None:
                self.image(image, text)
            elif text:
                self._thought("Overlay", text, ms=ms)
        elif kind == "answer":
            self._close_tool()
            if text:
                self.note(text)
            return  # its overlay is the large final one beside the chat
        elif kind == "error":
            # a step's problem (the run may go on, e.g. switching tool protocol); a fatal one also raises
            self._close_tool()
            self._thought("Problem", text or "the agent reported an error", ms=ms)
        else:
            self._close_tool()
            self._thought(_TITLES.get(kind, kind or "Step"), text, ms=ms)
        if image is not None and kind != "overlay":
            self.image(image)

    def finish(self) -> None:
        self._close_tool()


def numbered_instances(result: AgentResult) -> list[tuple[str, int, Instance]]:
    """(concept, instance number within the concept, Instance) in legend order."""
    rows = []
    for concept_mask in result.masks:
        for j, instance in enumerate(concept_mask.instances, start=1):
            rows.append((concept_mask.concept, j, instance))
    return rows


def legend_rows(result: AgentResult, image_shape: tuple[int, ...]) -> list[list]:
    """One row per instance: #, concept, instance, score, area in pixels, area in % of the image."""
    total = int(image_shape[0]) * int(image_shape[1])
    rows = []
    for n, (concept, j, instance) in enumerate(numbered_instances(result), start=1):
        area = int(instance.area)
        rows.append([n, concept, j, round(float(instance.score), 3), area, round(100.0 * area / total, 2)])
    return rows


def final_overlay(image: np.ndarray, result: AgentResult) -> np.ndarray:
    """The image with every instance tinted and labelled by its legend number."""
    instances = numbered_instances(result)
    masks = [inst.mask for _, _, inst in instances]
    return render_overlay(image, masks, [str(n) for n in range(1, len(masks) + 1)])
