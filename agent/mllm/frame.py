"""The frame the MLLM sees: how the image is shrunk for a request, and how the model's coordinates map back.

An image larger than ``max_side`` is resized before it is sent (never padded), so a box the model
draws is in *its* frame, not the original's. ``Frame`` owns that resize and converts every box and
point of a ``segment_geometry`` call back to original pixels before the tool runs; it also shows
candidate boxes to the model in its frame, so a box it reads can be sent back unchanged.

Two coordinate conventions (``CoordinateConvention``):

* ``pixels``: pixels of the image as sent (GPT-4o, Claude, Qwen2.5-VL, which answers in pixels of
  its own resized input; we send it sides that are multiples of 28, its patch grid, so its server
  does not resize again);
* ``norm1000``: 0-1000 on both axes whatever the aspect ratio (Qwen2-VL, Qwen3-VL, Gemini).

``convention_for(model)`` picks the default for a model name from ``FAMILIES``; docs/agent.md lists
the sources.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict

CoordinateConvention = Literal["pixels", "norm1000"]
ConventionChoice = Literal["auto", "pixels", "norm1000"]
CONVENTIONS: tuple[str, ...] = ("auto", "pixels", "norm1000")
MAX_SIDE = 2048  # longest side of an image sent to the MLLM
NORM = 1000.0


class Family(BaseModel):
    """A model family's coordinate convention; ``multiple``: sent sides are rounded to it (its patch grid)."""

    prefix: str  # of the model name, lower case, without "-", "_" or a "provider/" part
    convention: CoordinateConvention
    multiple: int = 1


# The first matching prefix wins, so the longer "qwen2.5vl" precedes "qwen2vl"; an unknown model gets pixels.
FAMILIES: tuple[Family, ...] = (
    Family(prefix="qwen2.5vl", convention="pixels", multiple=28),
    Family(prefix="qwen2vl", convention="norm1000"),
    Family(prefix="qwen3vl", convention="norm1000"),
    Family(prefix="gemini", convention="norm1000"),
)


def family_of(model: str) -> Family | None:
    """The known family of a model name ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2.5vl:7b", "gemini-2.0-flash")."""
    name = model.strip().lower().rsplit("/", 1)[-1].replace("-", "").replace("_", "")
    return next((f for f in FAMILIES if name.startswith(f.prefix)), None)


def convention_for(model: str, choice: str = "auto") -> CoordinateConvention:
    """``choice`` unless it is "auto"; then the model family's convention, else ``pixels``."""
    if choice in ("pixels", "norm1000"):
        return choice  # type: ignore[return-value]  # narrowed by the test above
    if choice != "auto":
        raise ValueError(f"unknown coordinate convention {choice!r}; choose auto, pixels or norm1000")
    family = family_of(model)
    return family.convention if family else "pixels"


def fit_image(image: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """``image`` shrunk (aspect kept) so its longest side is at most ``max_side``; crops and overlays alike."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    return cv2.resize(image, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)


class Frame(BaseModel):
    """An original ``width`` x ``height`` image as the model sees it: ``sent_width`` x ``sent_height``
    pixels, its coordinates read in ``convention``."""

    model_config = ConfigDict(frozen=True)

    width: int
    height: int
    sent_width: int
    sent_height: int
    convention: CoordinateConvention = "pixels"
    max_side: int = MAX_SIDE  # what another image of the request (a crop) is fitted to

    @classmethod
    def fit(cls, width: int, height: int, *, max_side: int = MAX_SIDE, multiple: int = 1,
            convention: CoordinateConvention = "pixels") -> Frame:
        """The frame for an image: shrunk to ``max_side`` (never enlarged), sides rounded to ``multiple``."""
        if width < 1 or height < 1 or max_side < 1 or multiple < 1:
            raise ValueError(f"a frame needs positive sizes, got {width}x{height}, max_side {max_side}, "
                             f"multiple {multiple}")
        scale = min(1.0, max_side / max(width, height))
        w, h = width * scale, height * scale
        if multiple > 1:  # round to the grid, staying within max_side
            cap = max(multiple, max_side // multiple * multiple)
            w, h = (min(cap, max(multiple, round(v / multiple) * multiple)) for v in (w, h))
        else:
            w, h = max(1, int(w)), max(1, int(h))
        return cls(width=width, height=height, sent_width=int(w), sent_height=int(h), convention=convention,
                   max_side=max_side)

    @classmethod
    def for_model(cls, width: int, height: int, model: str, choice: str = "auto", *,
                  max_side: int = MAX_SIDE) -> Frame:
        family = family_of(model)
        return cls.fit(width, height, max_side=max_side, multiple=family.multiple if family else 1,
                       convention=convention_for(model, choice))

    # --- images ---------------------------------------------------------------------------------------
    @property
    def resized(self) -> bool:
        return (self.sent_width, self.sent_height) != (self.width, self.height)

    def shrink(self, image: np.ndarray) -> np.ndarray:
        """The full image (or an overlay of it) as sent; another size (a crop) is only fitted to ``max_side``."""
        h, w = image.shape[:2]
        if (w, h) != (self.width, self.height):
            return fit_image(image, self.max_side)
        if not self.resized:
            return image
        shrinking = self.sent_width <= w and self.sent_height <= h
        return cv2.resize(image, (self.sent_width, self.sent_height),
                          interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)

    # --- coordinates ------------------------------------------------------------------------------------
    @property
    def _units(self) -> tuple[float, float]:
        """The model's units on each axis: sent pixels, or 1000."""
        return (NORM, NORM) if self.convention == "norm1000" else (self.sent_width, self.sent_height)

    def to_original(self, x: float, y: float) -> tuple[float, float]:
        ux, uy = self._units
        return x * self.width / ux, y * self.height / uy

    def from_original(self, x: float, y: float) -> tuple[float, float]:
        ux, uy = self._units
        return x * ux / self.width, y * uy / self.height

    def box_from_original(self, box: list[float]) -> list[float]:
        (x0, y0), (x1, y1) = self.from_original(box[0], box[1]), self.from_original(box[2], box[3])
        return [x0, y0, x1, y1]

    def geometry_to_original(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """A ``segment_geometry`` call's raw arguments with its boxes and points in original pixels.

        Only well-formed entries (4 finite numbers, a point's numeric x and y) are converted; the rest stay
        as written, so the tool's validation names them as the model sent them.
        """
        out = dict(arguments)
        boxes, points = arguments.get("boxes"), arguments.get("points")
        if isinstance(boxes, list):
            out["boxes"] = [self._box(b) if _numbers(b, 4) else b for b in boxes]
        if isinstance(points, list):
            out["points"] = [self._point(p) if isinstance(p, dict) and _numbers([p.get("x"), p.get("y")], 2) else p
                             for p in points]
        return out

    def _box(self, box: list[float]) -> list[float]:
        (x0, y0), (x1, y1) = self.to_original(box[0], box[1]), self.to_original(box[2], box[3])
        return [x0, y0, x1, y1]

    def _point(self, point: dict[str, Any]) -> dict[str, Any]:
        x, y = self.to_original(point["x"], point["y"])
        return {**point, "x": x, "y": y}

    def describe(self) -> str:
        """The frame as the system prompt states it (never the original size)."""
        if self.convention == "norm1000":
            return ("Coordinates are normalised to 0-1000 on both axes whatever the image's shape: (0, 0) is the "
                    "top-left corner and (1000, 1000) the bottom-right.")
        return (f"The image as sent to you is {self.sent_width}x{self.sent_height} pixels; coordinates are pixels "
                f"of that image, (0, 0) the top-left corner.")


def _numbers(values: Any, count: int) -> bool:
    return (isinstance(values, list) and len(values) == count
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values))
