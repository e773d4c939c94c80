"""Fit or check the offline planner's modality guesser (``agent/modality.py``) on the shared data.

``python -m evals.fit_modality fit --data ../shared/data`` fits a softmax regression on the train
split's image statistics and writes ``segmenter/modality_weights.json`` (the shipped resource);
``check`` prints the shipped weights' accuracy on the val split. A developer step, not run by users.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from agent.modality import FEATURE_NAMES, WEIGHTS_RESOURCE, ModalityClassifier, default_classifier, features
from segmenter.study_io import load_image

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def fit_classifier(x: np.ndarray, y: np.ndarray, classes: list[str], l2: float = 1e-2,
                   steps: int = 3000) -> ModalityClassifier:
    """Full-batch gradient descent on the softmax cross-entropy (small data: a few hundred rows)."""
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale
    onehot = np.eye(len(classes))[y]
    w, b = np.zeros((z.shape[1], len(classes))), np.zeros(len(classes))
    lr = 0.5
    for _ in range(steps):
        logits = z @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = (p - onehot) / len(z)
        w -= lr * (z.T @ grad + l2 * w)
        b -= lr * grad.sum(0)
    return ModalityClassifier(classes, mean, scale, w, b)


def to_dict(model: ModalityClassifier) -> dict:
    """The JSON resource's layout (rounded: the file is read by ``ModalityClassifier.from_dict``)."""
    return {
        "classes": model.classes,
        "feature_names": FEATURE_NAMES,
        "mean": [round(float(v), 6) for v in model.mean],
        "scale": [round(float(v), 6) for v in model.scale],
        "weights": [[round(float(v), 5) for v in row] for row in model.weights],
        "bias": [round(float(v), 5) for v in model.bias],
    }


def manifest_rows(data: Path, split: str, per_dataset: int) -> list[tuple[Path, str]]:
    """(image path, modality) for up to ``per_dataset`` evenly spaced rows of each dataset's split."""
    rows = []
    for manifest in sorted(data.glob("*/manifest.jsonl")):
        picked = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
        picked = [r for r in picked if r.get("split") == split and "image" in r]
        step = max(1, len(picked) // per_dataset)
        rows += [(manifest.parent / r["image"], r["modality"]) for r in picked[::step][:per_dataset]]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fit / check the modality guesser on the shared data")
    parser.add_argument("action", choices=["fit", "check"])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--per-dataset", type=int, default=150)
    args = parser.parse_args(argv)
    model = default_classifier()
    if args.action == "fit":
        train = manifest_rows(args.data, "train", args.per_dataset)
        classes = sorted({m for _, m in train})
        y = np.array([classes.index(m) for _, m in train])
        model = fit_classifier(np.stack([features(load_image(p)) for p, _ in train]), y, classes)
        out = Path(str(WEIGHTS_RESOURCE))
        out.write_text(json.dumps(to_dict(model), indent=1) + "\n", encoding="utf-8")
        print(f"fitted on {len(train)} train images ({', '.join(classes)}) -> {out}")
    val = manifest_rows(args.data, "val", 10_000)
    guesses = [(p.name, m, model.guess(load_image(p)).modality) for p, m in val]
    wrong = [g for g in guesses if g[1] != g[2]]
    print(f"val accuracy {1 - len(wrong) / len(val):.4f} on {len(val)} images; wrong: {wrong[:20]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
