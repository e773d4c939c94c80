"""Training data for MedSAM3-Lite: manifests -> cached frozen-encoder embeddings.

The TinyViT encoder is frozen, so each training image is encoded once (bf16 autocast where the
CPU has bf16 units, see precision.py) and its 256x64x64 embedding is kept as float16 in one ``.npz``
per item together with its letterboxed masks. Caching is resumable: existing items are
skipped. Concepts whose catalog entry has ``tile`` are cached as native-resolution tiles,
exactly as the segmenter will see them at inference. An augmented copy (``copy`` > 0, ``train-lite
--augment``) is the item's image and masks reframed and degraded by ``augment.py``, cached under its own
key. A manifest's ``absent_concepts`` (organs the
source labels on every slice, so truly absent from this one) are cached as empty masks: same-modality
negatives for the mask and the presence gate. Masks of concepts the catalog lacks are left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segmenter.catalog import load_catalog
from segmenter.lite.augment import AUGMENT_VERSION, augmented_copy
from segmenter.lite.frame import letterbox, letterbox_mask, tile_windows
from segmenter.lite.model import MedSAM3Lite
from segmenter.lite.precision import fast_bf16

# brain_tumor_3d_slices re-samples brain_mri's patients; pooling both would double-count them.
DEFAULT_DATASETS = ["kvasir_seg", "isic2017", "busi", "drishti_gs1", "covid_cxr_lungs", "monuseg", "brain_mri"]
# Licensed for evaluation only (ircadb_ct: CC BY-NC-ND): never a source of shipped weights.
EVAL_ONLY_DATASETS = frozenset({"ircadb_ct"})


@dataclass(frozen=True)
class CacheItem:
    dataset: str
    item_id: str
    image_path: Path
    masks: dict[str, Path | None]  # None: annotated absent (an all-zero mask)
    window: tuple[int, int, int, int] | None  # (y0, x0, y1, x1) for tiled concepts
    copy: int = 0  # 0: the image as it is; k > 0: its k-th augmented copy (augment.py)
    modality: str | None = None  # the manifest's, e.g. "ct" (augmented copies of CT get a contrast phase)

    @property
    def key(self) -> str:
        suffix = "" if self.window is None else "_t{}_{}".format(*self.window[:2])
        suffix += f"_a{self.copy}v{AUGMENT_VERSION}" if self.copy else ""
        return f"{self.dataset}/{self.item_id}{suffix}"


def with_copies(items: list[CacheItem], copies: dict[str, int]) -> list[CacheItem]:
    """``items`` followed by ``copies[dataset]`` augmented copies of each untiled item of that dataset (a tile
    already is a crop at the native scale the segmenter tiles at, so tiles get none)."""
    extra = [replace(it, copy=k) for k in range(1, max(copies.values(), default=0) + 1)
             for it in items if it.window is None and k <= copies.get(it.dataset, 0)]
    return items + extra


def manifest_items(data_root: Path, split: str, datasets: list[str], max_per_dataset: int | None) -> list[CacheItem]:
    """Items of the given split, round-robin across datasets so a partial cache is balanced."""
    catalog = load_catalog()
    if split == "train" and EVAL_ONLY_DATASETS & set(datasets):
        raise ValueError(f"{sorted(EVAL_ONLY_DATASETS & set(datasets))}: licensed for evaluation only, not training")
    per_dataset: list[list[CacheItem]] = []
    for name in datasets:
        manifest = data_root / name / "manifest.jsonl"
        if not manifest.exists():
            continue
        rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = [r for r in rows if r["split"] == split]
        rows.sort(key=lambda r: r["id"])
        rng = np.random.default_rng(0)
        rng.shuffle(rows)
        items: list[CacheItem] = []
        for row in rows:
            masks: dict[str, Path | None] = {
                c: data_root / name / p for c, p in row["masks"].items() if catalog.get(c) is not None
            }
            masks.update({c: None for c in row.get("absent_concepts", []) if catalog.get(c) is not None})
            concepts = [catalog.get(c) for c in masks]
            tiles = {concept.tile for concept in concepts if concept is not None and concept.tile is not None}
            image_path = data_root / name / row["image"]
            item = CacheItem(name, row["id"], image_path, masks, None, modality=row.get("modality"))
            if tiles:
                items += [replace(item, window=w) for w in tile_windows(row["height"], row["width"], min(tiles))]
            else:
                items.append(item)
            if max_per_dataset and len(items) >= max_per_dataset:
                break
        per_dataset.append(items[:max_per_dataset] if max_per_dataset else items)
    ordered: list[CacheItem] = []
    for i in range(max((len(x) for x in per_dataset), default=0)):
        ordered.extend(x[i] for x in per_dataset if i < len(x))
    return ordered


def _crop(array: np.ndarray, window: tuple[int, int, int, int] | None) -> np.ndarray:
    if window is None:
        return array
    y0, x0, y1, x1 = window
    return array[y0:y1, x0:x1]


def build_cache(
    net: MedSAM3Lite, items: list[CacheItem], cache_dir: Path, progress: bool = True, batch: int = 4,
    encoder: str | None = None,
) -> int:
    """Encode every item not cached yet. Returns the number newly written.

    ``encoder`` is the image encoder's runtime as in runtime.py (``auto``: OpenVINO on CPU, whose fp32
    embeddings match PyTorch's to ~1e-6 and come ~3x faster there; ``torch``: the reference)."""
    from tqdm import tqdm

    from segmenter.lite.parts import build_part, part_spec

    # the backend's encoder part (one conversion cache for both)
    _, encode = build_part(encoder, "cpu", *part_spec("encoder", "cpu", lambda: net.image_encoder),
                           lambda: fast_bf16(torch.device("cpu")))

    todo = [it for it in items if not (cache_dir / f"{it.key}.npz").exists()]
    written = 0
    bar = tqdm(total=len(todo), desc="encode", disable=not progress, unit="img")
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        tensors, metas = [], []
        for it in chunk:
            image = _crop(np.asarray(Image.open(it.image_path).convert("RGB")), it.window)
            full = {
                concept: np.zeros(image.shape[:2], bool) if path is None
                else _crop(np.asarray(Image.open(path).convert("L")) > 127, it.window)
                for concept, path in it.masks.items()
            }
            if it.copy:
                image, full = augmented_copy(image, full, it.key, it.modality)
            tensor, box = letterbox(image)
            tensors.append(tensor)
            metas.append((it, box, {concept: letterbox_mask(mask) for concept, mask in full.items()}))
        # a converted encoder has a fixed batch of one
        emb = np.concatenate([encode(x[None])[0] for x in tensors]).astype(np.float16)
        for (it, box, masks), e in zip(metas, emb, strict=True):
            out = cache_dir / f"{it.key}.npz"
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp.npz")
            np.savez(
                tmp,
                embedding=e,
                concepts=np.array(list(masks), dtype=object).astype(str),
                masks=np.stack(list(masks.values())),
                new_size=np.array(box.new_size),
            )
            tmp.replace(out)
            written += 1
        bar.update(len(chunk))
    bar.close()
    return written


@dataclass
class CachedSample:
    dataset: str
    key: str
    embedding: np.ndarray  # (256, 64, 64) float16
    masks: dict[str, np.ndarray]  # concept -> (256, 256) uint8
    new_size: tuple[int, int]


def load_cache(cache_dir: Path, items: list[CacheItem]) -> list[CachedSample]:
    samples = []
    for it in items:
        path = cache_dir / f"{it.key}.npz"
        if not path.exists():
            continue
        with np.load(path) as z:
            samples.append(
                CachedSample(
                    dataset=it.dataset,
                    key=it.key,
                    embedding=z["embedding"],
                    masks={str(c): m for c, m in zip(z["concepts"], z["masks"], strict=True)},
                    new_size=(int(z["new_size"][0]), int(z["new_size"][1])),
                )
            )
    return samples


@torch.no_grad()
def pooled_embeddings(net: MedSAM3Lite, samples: list[CachedSample], batch: int = 64) -> torch.Tensor:
    """(N, 512) the presence gate's pooled view of each cached sample's embedding (its input; decoder-free)."""
    chunks = [np.stack([s.embedding for s in samples[k : k + batch]]) for k in range(0, len(samples), batch)]
    return torch.cat([net.presence_gate.pool(torch.from_numpy(c).float()) for c in chunks])
