"""Per-concept presence thresholds, chosen on val embeddings for a target recall.

The presence gate (``model.PresenceGate``) answers "is this concept in the image?" from the pooled
image embedding and the phrase. One threshold (0.5) for every concept keeps nearly every positive
but lets through many same-modality images without the target (BUSI normal scans, tumour-free MRI
slices). Here each concept gets its own threshold: one that keeps ``recall`` of the val positives and
lets through as few val negatives as that recall allows; of those, the default 0.5 where it is one
(nothing to gain from moving), else the one halfway between the highest negative it must reject and
the lowest positive above it, so that val's counts hold with a margin and no positive is dropped in vain.

Only the gate is run (pooled embedding + text), never the decoder: seconds on CPU for a val cache.
Scores are per image: a tiled concept (cell nucleus) takes its tiles' highest score, as the Lite
backend does. Labels: positive where the concept's mask is non-empty; a negative where the image is
annotated without it (an empty mask: BUSI normal, tumour-free slices, organ-free slices), or where
the image is of another modality (counted apart: those are easy). A concept with fewer than
``min_positives`` val positives keeps the default threshold.

The thresholds are written next to the weights (``presence_thresholds.json``) with the weights'
sha256; ``load_thresholds`` ignores, with a warning, a file written for other weights.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import numpy as np
import torch
from pydantic import BaseModel, Field

from segmenter.catalog import load_catalog
from segmenter.lite.dataset import CachedSample, pooled_embeddings
from segmenter.lite.model import MedSAM3Lite
from segmenter.lite.thresholds import DEFAULT_THRESHOLD, ConceptThreshold
from segmenter.text import shared_embedder

_TILE = re.compile(r"_t\d+_\d+$")  # a tile's suffix on a cache key (dataset.CacheItem.key)


class _Scores(BaseModel):
    positive: list[float] = Field(default_factory=list)
    negative: list[float] = Field(default_factory=list)  # same modality, annotated absent
    other: list[float] = Field(default_factory=list)  # another modality


@torch.no_grad()
def presence_scores(net: MedSAM3Lite, samples: list[CachedSample]) -> dict[str, _Scores]:
    """The gate's probability for every (val image, catalog concept) pair with a label, by concept.

    Canonical concept names are the phrases; an image's tiles are pooled by their highest score."""
    catalog = load_catalog()
    modality_of = {c.name: c.modality for c in catalog.concepts}
    names = list(modality_of)
    text = torch.from_numpy(shared_embedder().embed(names)).float()
    net.eval()
    images: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        if any(c in modality_of for c in s.masks):  # items of concepts the catalog lacks tell nothing here
            images[_TILE.sub("", s.key)].append(i)
    scores = {n: _Scores() for n in names}
    if not images:
        return scores
    pooled = pooled_embeddings(net, samples)
    prob = torch.stack([torch.sigmoid(net.presence_gate(pooled, t.expand(len(samples), -1))) for t in text])
    for indices in images.values():
        best = prob[:, indices].amax(dim=1).tolist()  # (concepts,): the image's highest tile
        masks = _image_masks([samples[i] for i in indices])
        own = {modality_of[c] for c in masks if c in modality_of}
        for name, p in zip(names, best, strict=True):
            if name in masks:
                (scores[name].positive if masks[name] else scores[name].negative).append(p)
            elif modality_of[name] not in own:
                scores[name].other.append(p)
    return scores


def _image_masks(tiles: list[CachedSample]) -> dict[str, bool]:
    """concept -> whether any tile of the image holds it."""
    out: dict[str, bool] = {}
    for s in tiles:
        for concept, mask in s.masks.items():
            out[concept] = out.get(concept, False) or bool(mask.any())
    return out


def choose_threshold(positive: list[float], negative: list[float], recall: float,
                     default: float = DEFAULT_THRESHOLD) -> float:
    """A threshold (score >= threshold: present) keeping ``recall`` of ``positive`` with the fewest ``negative``
    scores above it, and among those the most positives: the default where it is one of them, else halfway
    between the highest negative it must reject and the lowest positive above that negative."""
    if not positive:
        raise ValueError("no positive scores to keep")
    ranked = sorted(positive, reverse=True)
    highest = ranked[max(1, math.ceil(recall * len(ranked) - 1e-9)) - 1]  # the highest allowed threshold
    rejected = [s for s in negative if s < highest]  # every negative the best allowed threshold rejects
    floor = max(rejected, default=-math.inf)  # ... so any threshold in (floor, highest] rejects as many
    if floor < default <= highest:
        return default
    lowest_kept = min(s for s in positive if s > floor)
    return (max(floor, 0.0) + lowest_kept) / 2

def _share(values: list[float], threshold: float, *, above: bool) -> float | None:
    if not values:
        return None
    return float(np.mean([(v >= threshold) == above for v in values]))


def calibrate_presence(
    net: MedSAM3Lite, samples: list[CachedSample], recall: float = 0.97, *, min_positives: int = 10,
    default: float = DEFAULT_THRESHOLD,
) -> dict[str, ConceptThreshold]:
    """Per catalog concept: its threshold for ``recall`` on these (val) samples and the sensitivity and
    specificity it achieves (see the module doc). Concepts with no labelled val image are left out."""
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"recall must be in (0, 1], got {recall}")
    out: dict[str, ConceptThreshold] = {}
    for name, s in presence_scores(net, samples).items():
        if not (s.positive or s.negative):
            continue
        calibrated = len(s.positive) >= min_positives
        t = choose_threshold(s.positive, s.negative + s.other, recall, default) if calibrated else default
        out[name] = ConceptThreshold(
            threshold=t, calibrated=calibrated,
            sensitivity=_share(s.positive, t, above=True), specificity=_share(s.negative, t, above=False),
            n_positive=len(s.positive), n_negative=len(s.negative),
            specificity_other_modality=_share(s.other, t, above=False), n_other_modality=len(s.other),
            sensitivity_at_default=_share(s.positive, default, above=True),
            specificity_at_default=_share(s.negative, default, above=False),
        )
    return out


