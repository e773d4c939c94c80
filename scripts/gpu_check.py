"""GPU check for the sam3 backend: a full-size SAM 3 with random weights, text prompts at 1008 px.

Random weights give meaningless masks; the point is the code path and the speed on this GPU:
the backend encodes each image once and decodes all its prompts in one batch, in bf16.

    python scripts/gpu_check.py --images 8 --prompts "polyp,skin lesion,optic disc,lung"
    python scripts/gpu_check.py --tiny --device cpu     # a seconds-long smoke run of the same script, no GPU
"""

from __future__ import annotations

import argparse
import json
import string
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segmenter.sam3 import PostProcess, Sam3Backend
from segmenter.types import Box, Prompt


def tokenizer():
    """CLIP's BPE over letters: no download, and ids stay inside SAM 3's 49408-token vocabulary."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in string.ascii_lowercase:
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=32)


def build(tiny: bool, device: torch.device, dtype: torch.dtype):
    from transformers import Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

    if tiny:
        size = 224
        config = Sam3Config(
            vision_config={"backbone_config": {"model_type": "sam3_vit_model", "hidden_size": 32,
                                               "intermediate_size": 64, "num_hidden_layers": 2,
                                               "num_attention_heads": 2, "image_size": size, "window_size": 8,
                                               "global_attn_indexes": [1], "pretrain_image_size": size},
                           "fpn_hidden_size": 32, "backbone_feature_sizes": [[64, 64], [32, 32], [16, 16]]},
            text_config={"model_type": "clip_text_model", "vocab_size": 64, "hidden_size": 32,
                         "intermediate_size": 64, "projection_dim": 32, "num_hidden_layers": 1,
                         "num_attention_heads": 2, "max_position_embeddings": 32, "bos_token_id": 0,
                         "eos_token_id": 1},
            geometry_encoder_config={"hidden_size": 32, "num_layers": 1, "num_attention_heads": 2,
                                     "intermediate_size": 64},
            detr_encoder_config={"hidden_size": 32, "num_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
            detr_decoder_config={"hidden_size": 32, "num_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
            mask_decoder_config={"hidden_size": 32, "num_attention_heads": 2},
        )
    else:
        config = Sam3Config()  # the released SAM 3's sizes: ViT-L-ish 1024 x 32 layers at 1008 px, CLIP text 24 layers
        size = config.image_size
    with torch.device(device):
        model = Sam3Model(config)
    model = model.to(dtype).eval()
    processor = Sam3Processor(image_processor=Sam3ImageProcessor(size={"height": size, "width": size}),
                              tokenizer=tokenizer())
    return model, processor, size


def lora_check(model, rank: int = 16, alpha: float = 32.0) -> dict:
    """Write a random native-format LoRA over every ViT block and text layer; merge it; time the merge."""
    from segmenter.sam3.lora import merge_lora

    cfg = model.config
    vit, text = cfg.vision_config.backbone_config, cfg.text_config
    d, td = vit.hidden_size, text.hidden_size
    shapes = {}
    for i in range(vit.num_hidden_layers):
        p = f"backbone.vision_backbone.trunk.blocks.{i}"
        shapes |= {f"{p}.attn.qkv": (d, 3 * d), f"{p}.attn.proj": (d, d),
                   f"{p}.mlp.fc1": (d, vit.intermediate_size), f"{p}.mlp.fc2": (vit.intermediate_size, d)}
    for i in range(text.num_hidden_layers):
        p = f"backbone.language_backbone.encoder.transformer.resblocks.{i}"
        shapes |= {f"{p}.attn.{n}": (td, td) for n in ("q_proj", "k_proj", "v_proj", "out_proj")}
    state = {}
    for module, (fan_in, fan_out) in shapes.items():
        state[f"{module}.lora.lora_A"] = torch.randn(fan_in, rank) * 0.01
        state[f"{module}.lora.lora_B"] = torch.randn(rank, fan_out) * 0.01
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lora.pt"
        torch.save(state, path)
        start = time.perf_counter()
        report = merge_lora(model, path, rank, alpha)
        ms = (time.perf_counter() - start) * 1000
    return {**report.summary(), "path": "<random>", "merge_ms": round(ms, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--prompts", default="polyp,skin lesion,optic disc,left lung")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--tiny", action="store_true", help="a tiny config, for a smoke run without a GPU")
    parser.add_argument("--no-lora", action="store_true", help="skip the LoRA merge check")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA GPU visible to torch {torch.__version__}; install a CUDA build or pass --tiny --device cpu")
        return 2
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    model, processor, size = build(args.tiny, device, dtype)
    sync()
    build_s = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    lora = None if args.no_lora else lora_check(model)
    backend = Sam3Backend(net=model, processor=processor, device=str(device), dtype=args.dtype,
                          postprocess=PostProcess.transformers())
    texts = [t.strip() for t in args.prompts.split(",") if t.strip()]
    rng = np.random.default_rng(0)
    shapes = [(1024, 1280), (768, 1024), (1008, 1008), (512, 640)]
    times, decode_ms, encode_ms = [], [], []
    for i in range(args.warmup + args.images):
        h, w = shapes[i % len(shapes)]
        image = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        prompts = [Prompt(concept=t) for t in texts] + [Prompt(concept=texts[0], boxes=[Box(x0=w * 0.2, y0=h * 0.2,
                                                                                              x1=w * 0.6, y1=h * 0.7)])]
        sync()
        t0 = time.perf_counter()
        backend.set_image(image)
        results = backend.segment_many(prompts)
        sync()
        elapsed = (time.perf_counter() - t0) * 1000
        if i >= args.warmup:
            times.append(elapsed)
            encode_ms.append(results[0].timings_ms["encode"])
            decode_ms.append(sum(r.timings_ms["decode"] for r in results))
    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": args.dtype,
        "params_m": round(params / 1e6, 1),
        "image_px": size,
        "build_s": round(build_s, 1),
        "prompts_per_image": len(prompts),
        "ms_per_image": round(float(np.mean(times)), 1),
        "encode_ms": round(float(np.mean(encode_ms)), 1),
        "decode_ms_all_prompts": round(float(np.mean(decode_ms)), 1),
        "images_timed": len(times),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
        "lora": lora,
    }
    print(json.dumps(summary, indent=2))
    print(f"{summary['ms_per_image']} ms / image "
          f"({len(prompts)} prompts, {size} px, {args.dtype}, {summary['device']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
