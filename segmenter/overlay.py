"""Overlays (set-of-marks): numbered masks in distinct colours on the image.

Used by the segment command, the agent's examine tool (the images an MLLM looks at) and the UI.
"""

from __future__ import annotations

import cv2
import numpy as np

# Distinct, colour-blind-aware colours (Okabe-Ito, then extras), RGB.
PALETTE = [
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
    (213, 94, 0), (204, 121, 167), (255, 255, 255), (148, 103, 189), (140, 86, 75),
]


def colour(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def _label(canvas: np.ndarray, text: str, xy: tuple[int, int], rgb: tuple[int, int, int], scale: float) -> None:
    font = cv2.FONT_HERSHEY_SIMPLEX
    thickness = max(1, int(round(scale * 2)))
    (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
    x = int(np.clip(xy[0], 0, max(0, canvas.shape[1] - tw - 4)))
    y = int(np.clip(xy[1], th + 4, canvas.shape[0] - 1))
    cv2.rectangle(canvas, (x, y - th - 4), (x + tw + 4, y + base - 2), (0, 0, 0), -1)
    cv2.putText(canvas, text, (x + 2, y - 2), font, scale, rgb, thickness, cv2.LINE_AA)


def render_overlay(
    image: np.ndarray,
    masks: list[np.ndarray],
    labels: list[str] | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """RGB uint8 image with each mask tinted, outlined and labelled (default labels 1, 2, ...)."""
    canvas = image.copy()
    labels = labels if labels is not None else [str(i + 1) for i in range(len(masks))]
    scale = max(0.4, min(image.shape[:2]) / 600)
    for i, mask in enumerate(masks):
        rgb = np.array(colour(i), dtype=np.float32)
        region = mask.astype(bool)
        canvas[region] = (canvas[region] * (1 - alpha) + rgb * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, colour(i), max(1, int(round(scale * 2))))
    for i, mask in enumerate(masks):
        if mask.any():
            # the label sits at the mask's most interior point, so it stays on the object
            dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
            y, x = np.unravel_index(int(dist.argmax()), dist.shape)
            _label(canvas, labels[i], (int(x), int(y)), colour(i), scale)
    return canvas

