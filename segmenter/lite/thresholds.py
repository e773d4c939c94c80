"""Per-concept presence thresholds beside the weights (``presence_thresholds.json``): the file's models, reading
and writing it. Choosing them is calibrate.py's (it needs PyTorch; reading them must not: runtime.py)."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

from pydantic import BaseModel, Field

from segmenter.lite.runtime import file_sha256

THRESHOLDS_FILE = "presence_thresholds.json"
DEFAULT_THRESHOLD = 0.5


class ConceptThreshold(BaseModel):
    """One concept's threshold and what it achieves on the val images it was chosen on."""

    threshold: float
    calibrated: bool  # False: too few val positives, the default threshold is kept
    sensitivity: float | None  # share of positives whose score reaches the threshold
    specificity: float | None  # same-modality negatives (annotated absent) whose score is below it
    n_positive: int
    n_negative: int
    specificity_other_modality: float | None  # images of another modality asked for this concept
    n_other_modality: int
    sensitivity_at_default: float | None  # the same figures at the default threshold, for comparison
    specificity_at_default: float | None


class PresenceThresholds(BaseModel):
    """``presence_thresholds.json``: the thresholds of one weights file."""

    weights_sha256: str
    recall: float
    default: float = DEFAULT_THRESHOLD
    source: str = ""  # where the val scores came from (cache folder, item count)
    concepts: dict[str, ConceptThreshold] = Field(default_factory=dict)


def thresholds_path(weights: Path) -> Path:
    return Path(weights).with_name(THRESHOLDS_FILE)


def write_thresholds(weights: Path, concepts: dict[str, ConceptThreshold], recall: float, source: str,
                     out: Path | None = None) -> Path:
    """``presence_thresholds.json`` beside ``weights`` (or at ``out``), tied to the weights' sha256."""
    path = out or thresholds_path(weights)
    table = PresenceThresholds(weights_sha256=file_sha256(Path(weights)), recall=recall, source=source,
                               concepts=concepts)
    path.write_text(table.model_dump_json(indent=1) + "\n", encoding="utf-8")
    return path


def load_thresholds(weights: Path) -> dict[str, float]:
    """Calibrated thresholds of these weights by concept name; {} when there is no file beside them, or
    (with a warning) when the file is unreadable or was written for other weights."""
    path = thresholds_path(weights)
    if not path.is_file():
        return {}
    try:
        table = PresenceThresholds.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, OSError) as exc:
        warnings.warn(f"{path.name}: unreadable ({type(exc).__name__}); presence threshold {DEFAULT_THRESHOLD} "
                      "for every concept", stacklevel=2)
        return {}
    if table.weights_sha256 != file_sha256(Path(weights)):
        warnings.warn(f"{path.name} was calibrated for other weights (sha256 {table.weights_sha256[:12]}…); "
                      f"ignored: presence threshold {DEFAULT_THRESHOLD} for every concept", stacklevel=2)
        return {}
    return {name: c.threshold for name, c in table.concepts.items() if c.calibrated}


def thresholds_identity(weights: Path) -> str:
    """What "calibrated" means for these weights in a run's identity: the thresholds' hash, or that none apply."""
    thresholds = load_thresholds(weights)
    if not thresholds:
        return f"calibrated: none found, {DEFAULT_THRESHOLD} for every concept"
    digest = hashlib.sha256(json.dumps(thresholds, sort_keys=True).encode()).hexdigest()
    return f"calibrated per concept (sha256 {digest[:12]})"
