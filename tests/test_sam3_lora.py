"""MedSAM3's native LoRA file merged into transformers' Sam3Model: key mapping, q/k/v split, refusals."""

from __future__ import annotations

import pytest
import torch
from sam3_tiny import tiny_model

from segmenter.sam3.keymap import convert_key, linear_candidates
from segmenter.sam3.lora import LoraMismatchError, merge_lora, read_lora_file

RANK, ALPHA = 4, 8.0
V = "vision_encoder.backbone.layers"
T = "text_encoder.text_model.encoder.layers"

# native module -> the transformers weights its delta lands in (three for a fused q/k/v output)
CASES = {
    "backbone.vision_backbone.trunk.blocks.0.attn.qkv": [
        f"{V}.0.attention.{n}.weight" for n in ("q_proj", "k_proj", "v_proj")
    ],
    "backbone.vision_backbone.trunk.blocks.1.attn.proj": [f"{V}.1.attention.o_proj.weight"],
    "backbone.vision_backbone.trunk.blocks.1.mlp.fc2": [f"{V}.1.mlp.fc2.weight"],
    "backbone.language_backbone.encoder.transformer.resblocks.0.attn.q_proj": [f"{T}.0.self_attn.q_proj.weight"],
    "backbone.language_backbone.encoder.transformer.resblocks.0.attn.v_proj": [f"{T}.0.self_attn.v_proj.weight"],
    "backbone.language_backbone.encoder.transformer.resblocks.0.attn.out_proj": [f"{T}.0.self_attn.out_proj.weight"],
    "backbone.language_backbone.encoder.transformer.resblocks.0.mlp.c_fc": [f"{T}.0.mlp.fc1.weight"],
    "backbone.language_backbone.resizer": ["text_projection.weight"],
    "transformer.encoder.layers.0.cross_attn_image.k_proj": ["detr_encoder.layers.0.cross_attn.k_proj.weight"],
    "transformer.encoder.layers.0.linear1": ["detr_encoder.layers.0.mlp.fc1.weight"],
    "transformer.decoder.layers.1.ca_text.q_proj": ["detr_decoder.layers.1.text_cross_attn.q_proj.weight"],
    "transformer.decoder.layers.1.cross_attn.out_proj": ["detr_decoder.layers.1.vision_cross_attn.o_proj.weight"],
    "geometry_encoder.encode.0.self_attn.v_proj": ["geometry_encoder.layers.0.self_attn.v_proj.weight"],
    "segmentation_head.cross_attend_prompt.k_proj": ["mask_decoder.prompt_cross_attn.k_proj.weight"],
    "dot_prod_scoring.hs_proj": ["dot_product_scoring.query_proj.weight"],
    "geometry_encoder.boxes_direct_project": ["geometry_encoder.boxes_direct_project.weight"],  # same name in both
}


def native_lora(model, cases=CASES, rank=RANK, seed=1) -> dict[str, torch.nn.Parameter]:
    """A LoRA state dict as the native training code saves it: nn.Parameters named '<module>.lora.lora_A/B'."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    state = {}
    for native, targets in cases.items():
        out_features = sum(params[t].shape[0] for t in targets)
        in_features = params[targets[0]].shape[1]
        state[f"{native}.lora.lora_A"] = torch.nn.Parameter(torch.randn(in_features, rank, generator=gen))
        state[f"{native}.lora.lora_B"] = torch.nn.Parameter(torch.randn(rank, out_features, generator=gen))
    return state


def test_key_rules_are_transformers_conversion_rules():
    assert convert_key("backbone.vision_backbone.trunk.blocks.3.attn.qkv.weight") == f"{V}.3.attention.qkv.weight"
    assert convert_key("backbone.vision_backbone.trunk.blocks.3.attn.proj.bias") == f"{V}.3.attention.o_proj.bias"
    assert convert_key("backbone.language_backbone.encoder.transformer.resblocks.2.attn.in_proj_weight") == (
        f"{T}.2.self_attn.in_proj_weight"
    )
    assert convert_key("transformer.decoder.layers.4.norm1.weight") == (
        "detr_decoder.layers.4.vision_cross_attn_layer_norm.weight"
    )
    assert convert_key("sam3_model.dot_prod_scoring.prompt_proj.weight") == "dot_product_scoring.text_proj.weight"


def test_native_lora_merges_into_the_mapped_weights(tmp_path):
    model = tiny_model()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state = native_lora(model)
    path = tmp_path / "best_lora_weights.pt"
    torch.save(state, path)

    report = merge_lora(model, path, rank=RANK, alpha=ALPHA)

    after = model.state_dict()
    scale = ALPHA / RANK
    touched = set()
    for native, targets in CASES.items():
        a, b = state[f"{native}.lora.lora_A"].detach(), state[f"{native}.lora.lora_B"].detach()
        delta = scale * (a @ b).T  # (out, in)
        rows = delta.chunk(len(targets), dim=0)  # a fused qkv output splits into equal q, k, v thirds, in order
        for target, part in zip(targets, rows, strict=True):
            torch.testing.assert_close(after[target], before[target] + part, rtol=1e-5, atol=1e-5)
            touched.add(target)
        assert report.modules[native] == targets
    for key, value in after.items():
        if key not in touched:
            assert torch.equal(value, before[key]), f"{key} changed but no LoRA targets it"
    assert report.summary()["modules"] == len(CASES)
    assert report.summary()["weights"] == len(touched)


def test_qkv_split_order_is_q_then_k_then_v(tmp_path):
    """A delta only in the v third of the fused output must change v_proj alone."""
    model = tiny_model()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    a = torch.ones(32, RANK)
    b = torch.zeros(RANK, 96)
    b[:, 64:] = 1.0  # output rows 64..95: the v third
    path = tmp_path / "v_only.pt"
    torch.save({"backbone.vision_backbone.trunk.blocks.0.attn.qkv.lora.lora_A": a,
                "backbone.vision_backbone.trunk.blocks.0.attn.qkv.lora.lora_B": b}, path)
    merge_lora(model, path, rank=RANK, alpha=ALPHA)
    after = model.state_dict()
    for name in ("q_proj", "k_proj"):
        assert torch.equal(after[f"{V}.0.attention.{name}.weight"], before[f"{V}.0.attention.{name}.weight"])
    expected = before[f"{V}.0.attention.v_proj.weight"] + (ALPHA / RANK) * RANK
    torch.testing.assert_close(after[f"{V}.0.attention.v_proj.weight"], expected)


def test_malformed_lora_is_refused_with_every_problem_and_nothing_merged(tmp_path):
    model = tiny_model()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state = native_lora(model, {k: CASES[k] for k in list(CASES)[:3]})
    state["backbone.vision_backbone.trunk.blocks.0.attn.qkv.lora.lora_B"] = torch.randn(RANK, 90)  # wrong out size
    state["backbone.vision_backbone.trunk.blocks.9.mlp.fc1.lora.lora_A"] = torch.randn(32, RANK)  # no block 9
    state["backbone.vision_backbone.trunk.blocks.9.mlp.fc1.lora.lora_B"] = torch.randn(RANK, 64)
    state["transformer.encoder.layers.0.linear2.lora.lora_A"] = torch.randn(64, RANK)  # its lora_B is missing
    state["transformer.encoder.layers.0.linear1.lora.lora_A"] = torch.randn(32, 8)  # rank 8, configured 4
    state["transformer.encoder.layers.0.linear1.lora.lora_B"] = torch.randn(8, 64)
    state["transformer.encoder.layers.0.linear1.weight"] = torch.randn(64, 32)  # not a LoRA key
    path = tmp_path / "bad.pt"
    torch.save(state, path)

    with pytest.raises(LoraMismatchError) as caught:
        merge_lora(model, path, rank=RANK, alpha=ALPHA)

    problems = caught.value.problems
    assert len(problems) == 5, problems
    text = str(caught.value)
    assert "nothing was merged" in text
    assert "blocks.0.attn.qkv" in text and "(30, 32)" in text  # 90 / 3 rows per third vs the real (32, 32)
    assert "blocks.9.mlp.fc1: no matching transformers weight" in text
    assert "layers.0.linear2: .lora.lora_B is missing" in text
    assert "differs from the configured rank 4" in text
    assert "linear1.weight: not a LoRA key" in text
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed although the file was refused"


def test_unreadable_or_empty_lora_files_are_refused(tmp_path):
    model = tiny_model()
    with pytest.raises(FileNotFoundError, match="LoRA file not found"):
        merge_lora(model, tmp_path / "missing.pt", rank=RANK, alpha=ALPHA)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable torch.save file"):
        merge_lora(model, junk, rank=RANK, alpha=ALPHA)
    empty = tmp_path / "empty.pt"
    torch.save({}, empty)
    with pytest.raises(LoraMismatchError, match="holds no LoRA weights"):
        merge_lora(model, empty, rank=RANK, alpha=ALPHA)
    with pytest.raises(ValueError, match="rank and alpha must be positive"):
        merge_lora(model, empty, rank=0, alpha=ALPHA)


def test_wrapped_and_safetensors_files_read_the_same(tmp_path):
    from safetensors.torch import save_file

    model = tiny_model()
    state = {k: v.detach() for k, v in native_lora(model).items()}
    torch.save({"state_dict": state}, tmp_path / "wrapped.pt")
    save_file(state, str(tmp_path / "lora.safetensors"))
    for name in ("wrapped.pt", "lora.safetensors"):
        loaded = read_lora_file(tmp_path / name)
        assert set(loaded) == set(state)
        assert all(torch.equal(loaded[k], state[k]) for k in state)


def full_size_native_modules(cfg) -> list[str]:
    """Native names of the linears MedSAM3's full LoRA config adapts (attention and MLP layers everywhere)."""
    attn = ("q_proj", "k_proj", "v_proj", "out_proj")
    vit, text = cfg.vision_config.backbone_config, cfg.text_config
    vit_parts = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    names = []
    for i in range(vit.num_hidden_layers):
        names += [f"backbone.vision_backbone.trunk.blocks.{i}.{n}" for n in vit_parts]
    for i in range(text.num_hidden_layers):
        p = f"backbone.language_backbone.encoder.transformer.resblocks.{i}"
        names += [f"{p}.attn.{n}" for n in attn] + [f"{p}.mlp.c_fc", f"{p}.mlp.c_proj"]
    for i in range(cfg.detr_encoder_config.num_layers):
        p = f"transformer.encoder.layers.{i}"
        names += [f"{p}.{a}.{n}" for a in ("self_attn", "cross_attn_image") for n in attn]
        names += [f"{p}.linear1", f"{p}.linear2"]
    for i in range(cfg.detr_decoder_config.num_layers):
        p = f"transformer.decoder.layers.{i}"
        names += [f"{p}.{a}.{n}" for a in ("self_attn", "ca_text", "cross_attn") for n in attn]
        names += [f"{p}.linear1", f"{p}.linear2"]
    for i in range(cfg.geometry_encoder_config.num_layers):
        p = f"geometry_encoder.encode.{i}"
        names += [f"{p}.{a}.{n}" for a in ("self_attn", "cross_attn_image") for n in attn]
        names += [f"{p}.linear1", f"{p}.linear2"]
    names += [f"segmentation_head.cross_attend_prompt.{n}" for n in attn] + ["backbone.language_backbone.resizer"]
    return names


def test_full_size_sam3_takes_a_lora_on_every_attention_and_mlp_layer():
    """Shapes only (meta tensors): a MedSAM3-v1-sized LoRA (rank 16) maps onto the released SAM 3 architecture."""
    from transformers import Sam3Config, Sam3Model

    from segmenter.sam3.lora import plan_lora

    with torch.device("meta"):
        model = Sam3Model(Sam3Config())
    params = dict(model.named_parameters())
    vit = model.config.vision_config.backbone_config
    fused = {"attn.qkv": (vit.hidden_size, 3 * vit.hidden_size)}
    state = {}
    for module in full_size_native_modules(model.config):
        fan_in, fan_out = next((v for k, v in fused.items() if module.endswith(k)), (None, None))
        if fan_in is None:
            targets = [t for option in linear_candidates(module) for t in option if t.hf_key in params]
            fan_out, fan_in = params[targets[0].hf_key].shape
        state[f"{module}.lora.lora_A"] = torch.empty(fan_in, 16, device="meta")
        state[f"{module}.lora.lora_B"] = torch.empty(16, fan_out, device="meta")
    plan = plan_lora(state, params, rank=16)
    assert len(plan) == len(state) // 2 == 32 * 4 + 24 * 6 + 6 * 10 + 6 * 14 + 3 * 10 + 4 + 1
    assert [t.hf_key for t in plan["backbone.vision_backbone.trunk.blocks.31.attn.qkv"][2]] == [
        f"{V}.31.attention.{n}.weight" for n in ("q_proj", "k_proj", "v_proj")
    ]
