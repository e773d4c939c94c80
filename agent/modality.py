"""A cheap guess of an image's modality (endoscopy, fundus, x-ray, ...) from image statistics.

The offline planner uses it to resolve ambiguous words ("the lesion", "the tumor") from the
image itself. Features are colour / brightness / texture statistics of a small thumbnail; the
classifier is a softmax regression whose coefficients live in ``agent/modality_weights.py``
(fitted on the shared train split by ``python -m agent.modality fit --data ../shared/data``).
"""

from __future__ import annotations

import argparse
import json
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel

THUMB = 128
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
    corners = np.concatenate([dark[:c, :c].ravel(), dark[:c, -c:].ravel(), dark[-c:, :c].ravel(), dark[-c:, -c:].ravel()])
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
            probabilities={c: round(float(v), 4) for c, v in zip(self.classes, p)},
        )

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, classes: list[str], l2: float = 1e-2, steps: int = 3000):
        """Full-batch gradient descent on the softmax cross-entropy (small data: a few hundred rows)."""
        mean, scale = x.mean(0), x.std(0) + 1e-6
        z = (x - mean) / scale
        k = len(classes)
        onehot = np.eye(k)[y]
        w, b = np.zeros((z.shape[1], k)), np.zeros(k)
        lr = 0.5
        for _ in range(steps):
            logits = z @ w + b
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            grad = (p - onehot) / len(z)
            w -= lr * (z.T @ grad + l2 * w)
            b -= lr * grad.sum(0)
        return cls(classes, mean, scale, w, b)

    def to_dict(self) -> dict:
        return {
            "classes": self.classes,
            "feature_names": FEATURE_NAMES,
            "mean": [round(float(v), 6) for v in self.mean],
            "scale": [round(float(v), 6) for v in self.scale],
            "weights": [[round(float(v), 5) for v in row] for row in self.weights],
            "bias": [round(float(v), 5) for v in self.bias],
        }


@lru_cache(maxsize=1)
def default_classifier() -> ModalityClassifier:
    from agent.modality_weights import WEIGHTS

    if WEIGHTS.get("feature_names") != FEATURE_NAMES:
        raise RuntimeError("agent/modality_weights.py does not match agent/modality.py features; refit it")
    return ModalityClassifier(WEIGHTS["classes"], WEIGHTS["mean"], WEIGHTS["scale"], WEIGHTS["weights"], WEIGHTS["bias"])


def guess_modality(image: np.ndarray) -> ModalityGuess:
    return default_classifier().guess(image)


# --- fitting (a developer step; the result is committed as agent/modality_weights.py) -------------


def _rows(data: Path, split: str, per_dataset: int) -> list[tuple[Path, str]]:
    rows = []
    for manifest in sorted(data.glob("*/manifest.jsonl")):
        picked = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        picked = [r for r in picked if r.get("split") == split and "image" in r]
        step = max(1, len(picked) // per_dataset)
        rows += [(manifest.parent / r["image"], r["modality"]) for r in picked[::step][:per_dataset]]
    return rows


def _matrix(rows: list[tuple[Path, str]]) -> np.ndarray:
    from segmenter.image_io import load_image

    return np.stack([features(load_image(path)) for path, _ in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fit / check the modality guesser on the shared data")
    parser.add_argument("action", choices=["fit", "check"])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--per-dataset", type=int, default=150)
    args = parser.parse_args(argv)
    if args.action == "fit":
        train = _rows(args.data, "train", args.per_dataset)
        classes = sorted({m for _, m in train})
        y = np.array([classes.index(m) for _, m in train])
        model = ModalityClassifier.fit(_matrix(train), y, classes)
        out = Path(__file__).with_name("modality_weights.py")
        out.write_text(
            '"""Generated by `python -m agent.modality fit` from the shared train split; do not edit."""\n\n'
            f"WEIGHTS = {json.dumps(model.to_dict())}\n"
        )
        print(f"fitted on {len(train)} train images ({', '.join(classes)}) -> {out}")
    val = _rows(args.data, "val", 10_000)
    clf = default_classifier() if args.action == "check" else model
    wrong = [(p.name, m, clf.guess(_load(p)).modality) for p, m in val if clf.guess(_load(p)).modality != m]
    print(f"val accuracy {1 - len(wrong) / len(val):.4f} on {len(val)} images; wrong: {wrong[:20]}")
    return 0


def _load(path: Path) -> np.ndarray:
    from segmenter.image_io import load_image

    return load_image(path)


if __name__ == "__main__":
    raise SystemExit(main())
