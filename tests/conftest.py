"""Shared fixtures: the shared data folder (tests skip where it is absent) and one loaded segmenter."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _require_data() -> Path:
    if not (DATA / "kvasir_seg" / "manifest.jsonl").exists():
        pytest.skip(f"shared data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def data_root() -> Path:
    return _require_data()


def val_rows(dataset: str, limit: int | None = None, split: str = "val") -> list[dict]:
    """Val (or ``split``) rows of a shared dataset, in manifest order, with absolute image / mask paths."""
    root = _require_data() / dataset
    rows = []
    for line in (root / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["split"] != split:
            continue
        row["image"] = root / row["image"]
        row["masks"] = {c: root / p for c, p in row["masks"].items()}
        rows.append(row)
    return rows[:limit] if limit else rows


def catalog_with(**changes) -> dict:
    """The shipped concept catalog as data, with ``changes`` ({concept name: fields}) applied to its entries."""
    data = json.loads(resources.files("segmenter").joinpath("concepts.json").read_text(encoding="utf-8"))
    for entry in data["concepts"]:
        entry.update(changes.get(entry["name"], {}))
    return data


def read_mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L")) > 127


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


@pytest.fixture(scope="session")
def segmenter():
    from segmenter import Segmenter

    return Segmenter()
