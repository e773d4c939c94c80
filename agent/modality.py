"""A cheap guess of an image's modality (endoscopy, fundus, x-ray, ...) from image statistics.

The offline planner uses it to resolve ambiguous words ("the lesion", "the tumor") from the
image itself. Features are colour / brightness / texture statistics of a small thumbnail; the
classifier is a softmax regression whose coefficients are data, ``segmenter/modality_weights.json``
(shipped beside the concept catalog; fitted on the shared train split by
``python -m evals.fit_modality fit --data ../shared/data``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import cv2
import numpy as np
from pydantic import BaseModel

THUMB = 128
WEIGHTS_RESOURCE = resources.files("segmenter").joinpath("modality_weights.json")
FEATURE_NAMES = [
    "grey", "mean_r", "mean_g", "mean_b", "std_v", "mean_s", "std_s",
    *[f"hue_{i}" for i in range(8)],
    "dark", "dark_corners", "bright", "centre_minus_border", "edges", "laplacian", "aspect",
    "v_p10", "v_p50", "v_p90", "row_std", "col_std",
]


class ModalityGuess(BaseModel):
    modality: str  # the most likely one
    confidence: float
    probabilities: dict[str, float]


def features(image: np.ndarray) -> np.ndarray:
    """Scale-free statistics of an RGB uint8 image (len(FEATURE_NAMES) floats)."""
    h, w = image.shape[:2]
    small = cv2.resize(image, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)
    rgb = small / 255.0
    hsv = cv2.cvtColor(small.astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
    hue, sat, val = hsv[..., 0] / 180.0, hsv[..., 1] / 255.0, hsv[..., 2] / 255.0
    grey_flag = float(np.abs(rgb[..., 0] - rgb[..., 1]).mean() + np.abs(rgb[..., 1] - rgb[..., 2]).mean() < 0.01)
    # hue histogram weighted by saturation: grey images have an all-zero histogram
    hist, _ = np.histogram(hue, bins=8, range=(0, 1), weights=sat)
    hist = hist / (sat.sum() + 1e-6)
    dark = val < 0.06
    c = THUMB // 8
    corners = np.concatenate(
        [dark[:c, :c].ravel(), dark[:c, -c:].ravel(), dark[-c:, :c].ravel(), dark[-c:, -c:].ravel()]
    )
    centre = val[THUMB // 4 : 3 * THUMB // 4, THUMB // 4 : 3 * THUMB // 4].mean()
    border = np.concatenate([val[:c].ravel(), val[-c:].ravel(), val[:, :c].ravel(), val[:, -c:].ravel()]).mean()
    grey = cv2.cvtColor(small.astype(np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)
    edges = float(np.sqrt(gx**2 + gy**2).mean())
    lap = float(np.abs(cv2.Laplacian(grey, cv2.CV_32F)).mean())
    p10, p50, p90 = np.percentile(val, [10, 50, 90])
    return np.array(
        [
            grey_flag, *rgb.reshape(-1, 3).mean(0), val.std(), sat.mean(), sat.std(), *hist,
            dark.mean(), corners.mean(), (val > 0.9).mean(), centre - border, edges, lap, np.log(w / h),
            p10, p50, p90, val.mean(1).std(), val.mean(0).std(),
        ],
        dtype=np.float32,
    )


class ModalityClassifier:
    """Standardise features, then a linear softmax over modalities."""

    def __init__(self, classes: list[str], mean: np.ndarray, scale: np.ndarray, weights: np.ndarray, bias: np.ndarray):
        self.classes = classes
        self.mean, self.scale = np.asarray(mean, np.float32), np.asarray(scale, np.float32)
        self.weights, self.bias = np.asarray(weights, np.float32), np.asarray(bias, np.float32)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        z = (features(image) - self.mean) / self.scale
        logits = z @ self.weights + self.bias
        e = np.exp(logits - logits.max())
        return e / e.sum()

    def guess(self, image: np.ndarray) -> ModalityGuess:
        p = self.probabilities(image)
        best = int(p.argmax())
        return ModalityGuess(
            modality=self.classes[best],
            confidence=float(p[best]),
            probabilities={c: round(float(v), 4) for c, v in zip(self.classes, p, strict=True)},
        )

    @classmethod
    def from_dict(cls, data: dict) -> ModalityClassifier:
        if data.get("feature_names") != FEATURE_NAMES:
            raise RuntimeError(f"{WEIGHTS_RESOURCE.name} does not match agent/modality.py's features; refit it "
                               "with python -m evals.fit_modality fit")
        return cls(data["classes"], data["mean"], data["scale"], data["weights"], data["bias"])


@lru_cache(maxsize=1)
def default_classifier() -> ModalityClassifier:
    return ModalityClassifier.from_dict(json.loads(WEIGHTS_RESOURCE.read_text(encoding="utf-8")))


def guess_modality(image: np.ndarray) -> ModalityGuess:
    return default_classifier().guess(image)
