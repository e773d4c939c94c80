"""A tiny random-weight SAM 3 (hidden size 32, 1-2 layers, 224 px) with an in-memory CLIP tokenizer.

Real transformers classes throughout (``Sam3Model``, ``Sam3Processor``, ``CLIPTokenizer``); only the
sizes are small and the weights random, so nothing is downloaded.
"""

from __future__ import annotations

import string

import torch
from transformers import CLIPTokenizer, Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

IMAGE_SIZE = 224
HIDDEN = 32
WORDS = ["polyp", "skin", "lesion", "lung", "left", "right", "optic", "disc", "cup", "visual", "tumor"]


def tiny_config() -> Sam3Config:
    return Sam3Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam3_vit_model", "hidden_size": HIDDEN, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": IMAGE_SIZE, "patch_size": 14,
                "window_size": 8, "global_attn_indexes": [1], "pretrain_image_size": IMAGE_SIZE,
            },
            "fpn_hidden_size": HIDDEN,
            "backbone_feature_sizes": [[64, 64], [32, 32], [16, 16]],
        },
        text_config={
            "model_type": "clip_text_model", "vocab_size": 128, "hidden_size": HIDDEN, "intermediate_size": 64,
            "projection_dim": HIDDEN, "num_hidden_layers": 1, "num_attention_heads": 2,
            "max_position_embeddings": 32, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1,
        },
        geometry_encoder_config={"hidden_size": HIDDEN, "num_layers": 1, "num_attention_heads": 2,
                                 "intermediate_size": 64},
        detr_encoder_config={"hidden_size": HIDDEN, "num_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
        detr_decoder_config={"hidden_size": HIDDEN, "num_layers": 2, "num_queries": 12, "num_attention_heads": 2,
                             "intermediate_size": 64},
        mask_decoder_config={"hidden_size": HIDDEN, "num_upsampling_stages": 3, "num_attention_heads": 2},
    )


def tiny_tokenizer() -> CLIPTokenizer:
    """CLIP's BPE with a small vocabulary: whole words for a few concepts, single letters for the rest."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in string.ascii_lowercase:
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    merges = []
    for word in WORDS:  # merge each word letter by letter, so it becomes one token
        piece = word[0]
        for i, letter in enumerate(word[1:], start=1):
            tail = letter + ("</w>" if i == len(word) - 1 else "")
            merges.append((piece, tail))
            piece = piece + tail
            vocab.setdefault(piece, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=32)


def tiny_processor() -> Sam3Processor:
    image_processor = Sam3ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return Sam3Processor(image_processor=image_processor, tokenizer=tiny_tokenizer())


def tiny_model(seed: int = 0) -> Sam3Model:
    torch.manual_seed(seed)
    return Sam3Model(tiny_config()).eval()
