"""Turn the agent's step events into chat messages, and a result into the legend and the final overlay.

Pure functions over numpy and plain dicts (no gradio import), so they are tested directly.
Chat messages use Gradio's "messages" format: ``{"role", "content", "metadata"}``, where a
``metadata.title`` makes a collapsible step and image content is ``{"path": ...}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from PIL import Image

from segmenter.overlay import render_overlay

if TYPE_CHECKING:
    from agent.results import AgentResult
    from agent.volume_output import VolumeOutput
    from segmenter.study import Study, Window
    from segmenter.types import Instance
    from tools.measure import Measurement

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
        self._progress: int | None = None  # the message a volume run's slice progress updates in place
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
        self._end_progress()
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

    def measurements(self, items: list[Measurement]) -> None:
        """The run's measurements, one a line with their units (sizes in mm, mm², mL; ratios; counts)."""
        if items:
            self.note("**Measurements**\n" + "\n".join(f"- {m.text}" for m in items))

    def _slice_progress(self, text: str, ms: float | None) -> None:
        """A volume run's "slices k/N" events: one step, updated in place, not one message per batch."""
        if self._progress is None:
            self._close_tool()
            self._thought("Segmenting slices", text, status="pending", ms=ms)
            self._progress = len(self.messages) - 1
            return
        message = self.messages[self._progress]
        message["content"] = text
        if ms:
            message["metadata"]["duration"] = round(ms / 1000, 2)

    def add(self, event: Any) -> None:
        kind = getattr(event, "kind", "")
        text = (getattr(event, "text", "") or "").strip()
        ms = getattr(event, "ms", None)
        image = getattr(event, "image", None)
        data = getattr(event, "data", None) or {}
        if kind == "tool_result" and "done" in data and "total" in data:
            self._slice_progress(text, ms)
            return
        self._end_progress()  # the slices are done once anything else happens
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

    def _end_progress(self) -> None:
        if self._progress is not None:
            self.messages[self._progress]["metadata"]["status"] = "done"
            self._progress = None

    def finish(self) -> None:
        self._close_tool()
        self._end_progress()


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


def describe_study(name: str, study: Study) -> str:
    """What the chat says of an uploaded volume: its size, modality and voxel size (geometry only, no tag)."""
    slices, rows, cols = study.shape
    g = study.geometry
    spacing = ("voxel size unknown" if g.pixel_spacing is None or g.slice_spacing is None else
               f"voxels {g.pixel_spacing[0]:.2f} x {g.pixel_spacing[1]:.2f} x {g.slice_spacing:.2f} mm")
    modality = f"{g.modality} " if g.modality else ""
    shown = "" if study.window is None else f", shown through {window_label(study.window)}"
    return (f"{name}: a {modality}volume of {slices} slices of {rows} x {cols} ({spacing}){shown}. Each question "
            "is answered over the whole volume; the slider under the overlay then shows every slice with its masks.")


def window_label(window: Window) -> str:
    """How a study's grey values are shown, in words: "the lung window (level -600, width 1500)"."""
    kind = {"dicom": "the file's own window", "percentile": "the 0.5-99.5 percentile window",
            "custom": "the window"}.get(window.name, f"the {window.name} window" if window.name else "the window")
    return f"{kind} (level {window.center:g}, width {window.width:g})"


def slice_overlay(volume: VolumeOutput, index: int) -> np.ndarray:
    """Slice ``index`` of a volume answer with each concept's cross-section outlined and named."""
    canvas = render_overlay(volume.study.slices[index], [v.mask[index] for v in volume.concepts.values()],
                            list(volume.concepts))
    scale = max(0.4, min(canvas.shape[:2]) / 500)
    label = f"slice {index} (0-{volume.study.shape[0] - 1})"
    cv2.putText(canvas, label, (4, int(20 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 0),
                max(1, round(scale * 2)), cv2.LINE_AA)
    return canvas
