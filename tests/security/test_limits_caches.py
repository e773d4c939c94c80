"""Every cache has a budget: the backends' embedding cache by bytes (numpy arrays and torch tensors,
including lazily grown entries), the text-embedding cache by phrases."""

from __future__ import annotations

import numpy as np
import torch
from service_helpers import disc_image

from segmenter.base import EmbeddingCache, nbytes
from segmenter.lite.backend import LiteBackend
from segmenter.text import TextEmbedder, shared_embedder
from segmenter.types import Box, Prompt

BOX = Prompt(boxes=[Box(x0=60, y0=40, x1=160, y1=140)])


def test_nbytes_counts_arrays_and_tensors_once():
    array, tensor = np.zeros((10, 10), np.float32), torch.zeros(25, dtype=torch.float64)
    assert nbytes(array) == 400 and nbytes(tensor) == 200
    assert nbytes({"a": [array, (tensor, 3, "text")], "b": array}) == 600  # the shared array counts once


def test_embedding_cache_evicts_by_bytes():
    cache: EmbeddingCache[list] = EmbeddingCache(max_bytes=10_000)
    for key in "abc":
        cache.put(key, [torch.zeros(1000)])  # 4,000 bytes each
    assert len(cache) == 2 and "a" not in cache and cache.size_bytes == 8_000
    grown = cache.get("b")
    grown.append(np.zeros(1000, np.float32))  # an entry grows after put: embeddings are made lazily
    cache.fit()
    assert "c" not in cache and "b" in cache and cache.size_bytes == 8_000  # b was just used, c is older
    cache.put("huge", [np.zeros(100_000, np.uint8)])  # alone above the budget: kept while it is the current one
    assert list(cache._items) == ["huge"]


def test_lite_backend_embedding_cache_holds_its_byte_budget():
    backend = LiteBackend(cache_mb=6)  # one image with its 4 MB embedding, not two
    key_a = backend.set_image(disc_image(seed=31))
    assert backend.segment(BOX).found  # encodes a: its entry grows to ~4.1 MB
    key_b = backend.set_image(disc_image(seed=32))
    assert key_a in backend._cache and key_b in backend._cache  # b's pixels alone still fit
    assert backend.segment(BOX).found  # encodes b: a must go
    assert key_a not in backend._cache and key_b in backend._cache
    assert backend._cache.size_bytes <= 6 * 2**20 and backend.encode_count == 2


def test_text_embedding_cache_is_bounded():
    embedder = TextEmbedder(cache_phrases=3)
    phrases = [f"lesion number {i}" for i in range(8)]
    vectors = embedder.embed(phrases)
    assert len(embedder) == 3
    assert np.allclose(vectors, shared_embedder().embed(phrases), atol=1e-5)
    embedder.embed(["polyp"])
    assert len(embedder) == 3 and "polyp" in embedder._cache and "lesion number 5" not in embedder._cache
