"""Native SAM 3 parameter names -> transformers' ``Sam3Model`` names.

The rules are transformers' own, from ``models/sam3/convert_sam3_to_hf.py``
(``ORIGINAL_TO_CONVERTED_KEY_MAPPING`` and ``split_qkv``; Apache-2.0). That script is not part of
the transformers wheel, so the table is carried here, rule for rule, in the same order: each rule
is applied in turn to the result of the previous ones. Keep it in step with transformers when its
SAM 3 conversion changes.

Two kinds of native weights become three transformers weights: the ViT's fused ``attn.qkv``
linear, and ``nn.MultiheadAttention``'s packed ``in_proj_weight``. Both split along the output
dimension into equal q, k, v thirds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# fmt: off
NATIVE_TO_HF_RULES: tuple[tuple[str, str], ...] = (
    (r"^sam3_model\.", r""),
    # vision encoder: ViT backbone
    (r"^backbone\.vision_backbone\.trunk\.", r"vision_encoder.backbone."),
    (r"^vision_encoder\.backbone\.pos_embed", r"vision_encoder.backbone.embeddings.position_embeddings"),
    (r"^vision_encoder\.backbone\.patch_embed\.proj\.",
     r"vision_encoder.backbone.embeddings.patch_embeddings.projection."),
    (r"^vision_encoder\.backbone\.ln_pre\.", r"vision_encoder.backbone.layer_norm."),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.norm1\.", r"vision_encoder.backbone.layers.\1.layer_norm1."),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.norm2\.", r"vision_encoder.backbone.layers.\1.layer_norm2."),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.attn\.qkv\.", r"vision_encoder.backbone.layers.\1.attention.qkv."),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.attn\.proj\.", r"vision_encoder.backbone.layers.\1.attention.o_proj."),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.attn\.freqs_cis",
     r"vision_encoder.backbone.layers.\1.rotary_emb.rope_embeddings"),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.mlp\.fc1\.", r"vision_encoder.backbone.layers.\1.mlp.fc1."),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.mlp\.fc2\.", r"vision_encoder.backbone.layers.\1.mlp.fc2."),
    # vision encoder: FPN neck
    (r"^backbone\.vision_backbone\.neck\.fpn\.(\d+)\.", r"vision_encoder.neck.fpn_layers.\1."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.dconv_2x2_0\.", r"vision_encoder.neck.fpn_layers.\1.scale_layers.0."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.dconv_2x2_1\.", r"vision_encoder.neck.fpn_layers.\1.scale_layers.2."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.dconv_2x2\.", r"vision_encoder.neck.fpn_layers.\1.scale_layers.0."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.maxpool_2x2\.", r"vision_encoder.neck.fpn_layers.\1.scale_layers.0."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.conv_1x1\.", r"vision_encoder.neck.fpn_layers.\1.proj1."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.conv_3x3\.", r"vision_encoder.neck.fpn_layers.\1.proj2."),
    # text encoder (CLIP)
    (r"^backbone\.language_backbone\.encoder\.", r"text_encoder."),
    (r"^text_encoder\.token_embedding\.", r"text_encoder.text_model.embeddings.token_embedding."),
    (r"^text_encoder\.positional_embedding", r"text_encoder.text_model.embeddings.position_embedding.weight"),
    (r"^text_encoder\.ln_final\.", r"text_encoder.text_model.final_layer_norm."),
    (r"^text_encoder\.text_projection", r"text_encoder.text_projection.weight"),
    (r"^text_encoder\.transformer\.resblocks\.(\d+)\.attn\.in_proj_",
     r"text_encoder.text_model.encoder.layers.\1.self_attn.in_proj_"),
    (r"^text_encoder\.transformer\.resblocks\.(\d+)\.attn\.out_proj\.",
     r"text_encoder.text_model.encoder.layers.\1.self_attn.out_proj."),
    (r"^text_encoder\.transformer\.resblocks\.(\d+)\.ln_1\.",
     r"text_encoder.text_model.encoder.layers.\1.layer_norm1."),
    (r"^text_encoder\.transformer\.resblocks\.(\d+)\.ln_2\.",
     r"text_encoder.text_model.encoder.layers.\1.layer_norm2."),
    (r"^text_encoder\.transformer\.resblocks\.(\d+)\.mlp\.c_fc\.",
     r"text_encoder.text_model.encoder.layers.\1.mlp.fc1."),
    (r"^text_encoder\.transformer\.resblocks\.(\d+)\.mlp\.c_proj\.",
     r"text_encoder.text_model.encoder.layers.\1.mlp.fc2."),
    (r"^backbone\.language_backbone\.resizer\.", r"text_projection."),
    # geometry encoder
    (r"^geometry_encoder\.encode\.(\d+)\.cross_attn_image\.out_proj\.",
     r"geometry_encoder.layers.\1.cross_attn.o_proj."),
    (r"^geometry_encoder\.encode\.(\d+)\.cross_attn_image\.", r"geometry_encoder.layers.\1.cross_attn."),
    (r"^geometry_encoder\.encode\.(\d+)\.self_attn\.out_proj\.", r"geometry_encoder.layers.\1.self_attn.o_proj."),
    (r"^geometry_encoder\.encode\.(\d+)\.self_attn\.", r"geometry_encoder.layers.\1.self_attn."),
    (r"^geometry_encoder\.encode\.(\d+)\.linear1\.", r"geometry_encoder.layers.\1.mlp.fc1."),
    (r"^geometry_encoder\.encode\.(\d+)\.linear2\.", r"geometry_encoder.layers.\1.mlp.fc2."),
    (r"^geometry_encoder\.encode\.(\d+)\.norm1\.", r"geometry_encoder.layers.\1.layer_norm1."),
    (r"^geometry_encoder\.encode\.(\d+)\.norm2\.", r"geometry_encoder.layers.\1.layer_norm2."),
    (r"^geometry_encoder\.encode\.(\d+)\.norm3\.", r"geometry_encoder.layers.\1.layer_norm3."),
    (r"^geometry_encoder\.img_pre_norm\.", r"geometry_encoder.vision_layer_norm."),
    (r"^geometry_encoder\.norm\.", r"geometry_encoder.prompt_layer_norm."),
    (r"^geometry_encoder\.encode_norm\.", r"geometry_encoder.output_layer_norm."),
    # DETR encoder
    (r"^transformer\.encoder\.layers\.(\d+)\.cross_attn_image\.out_proj\.",
     r"detr_encoder.layers.\1.cross_attn.o_proj."),
    (r"^transformer\.encoder\.layers\.(\d+)\.cross_attn_image\.", r"detr_encoder.layers.\1.cross_attn."),
    (r"^transformer\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"detr_encoder.layers.\1.self_attn.o_proj."),
    (r"^transformer\.encoder\.layers\.(\d+)\.self_attn\.", r"detr_encoder.layers.\1.self_attn."),
    (r"^transformer\.encoder\.layers\.(\d+)\.cross_attn\.out_proj\.", r"detr_encoder.layers.\1.cross_attn.o_proj."),
    (r"^transformer\.encoder\.layers\.(\d+)\.cross_attn\.", r"detr_encoder.layers.\1.cross_attn."),
    (r"^transformer\.encoder\.layers\.(\d+)\.linear1\.", r"detr_encoder.layers.\1.mlp.fc1."),
    (r"^transformer\.encoder\.layers\.(\d+)\.linear2\.", r"detr_encoder.layers.\1.mlp.fc2."),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm1\.", r"detr_encoder.layers.\1.layer_norm1."),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm2\.", r"detr_encoder.layers.\1.layer_norm2."),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm3\.", r"detr_encoder.layers.\1.layer_norm3."),
    # DETR decoder
    (r"^transformer\.decoder\.query_embed\.", r"detr_decoder.query_embed."),
    (r"^transformer\.decoder\.reference_points\.", r"detr_decoder.reference_points."),
    (r"^transformer\.decoder\.instance_query_embed\.", r"detr_decoder.instance_query_embed."),
    (r"^transformer\.decoder\.instance_reference_points\.", r"detr_decoder.instance_reference_points."),
    (r"^transformer\.decoder\.presence_token\.", r"detr_decoder.presence_token."),
    (r"^transformer\.decoder\.presence_token_head\.layers\.0\.", r"detr_decoder.presence_head.layer1."),
    (r"^transformer\.decoder\.presence_token_head\.layers\.1\.", r"detr_decoder.presence_head.layer2."),
    (r"^transformer\.decoder\.presence_token_head\.layers\.2\.", r"detr_decoder.presence_head.layer3."),
    (r"^transformer\.decoder\.presence_token_out_norm\.", r"detr_decoder.presence_layer_norm."),
    (r"^transformer\.decoder\.norm\.", r"detr_decoder.output_layer_norm."),
    (r"^transformer\.decoder\.bbox_embed\.layers\.0\.", r"detr_decoder.box_head.layer1."),
    (r"^transformer\.decoder\.bbox_embed\.layers\.1\.", r"detr_decoder.box_head.layer2."),
    (r"^transformer\.decoder\.bbox_embed\.layers\.2\.", r"detr_decoder.box_head.layer3."),
    (r"^transformer\.decoder\.instance_bbox_embed\.layers\.0\.", r"detr_decoder.instance_box_head.layer1."),
    (r"^transformer\.decoder\.instance_bbox_embed\.layers\.1\.", r"detr_decoder.instance_box_head.layer2."),
    (r"^transformer\.decoder\.instance_bbox_embed\.layers\.2\.", r"detr_decoder.instance_box_head.layer3."),
    (r"^transformer\.decoder\.ref_point_head\.layers\.0\.", r"detr_decoder.ref_point_head.layer1."),
    (r"^transformer\.decoder\.ref_point_head\.layers\.1\.", r"detr_decoder.ref_point_head.layer2."),
    (r"^transformer\.decoder\.boxRPB_embed_x\.layers\.0\.", r"detr_decoder.box_rpb_embed_x.layer1."),
    (r"^transformer\.decoder\.boxRPB_embed_x\.layers\.1\.", r"detr_decoder.box_rpb_embed_x.layer2."),
    (r"^transformer\.decoder\.boxRPB_embed_y\.layers\.0\.", r"detr_decoder.box_rpb_embed_y.layer1."),
    (r"^transformer\.decoder\.boxRPB_embed_y\.layers\.1\.", r"detr_decoder.box_rpb_embed_y.layer2."),
    (r"^transformer\.decoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"detr_decoder.layers.\1.self_attn.o_proj."),
    (r"^transformer\.decoder\.layers\.(\d+)\.self_attn\.", r"detr_decoder.layers.\1.self_attn."),
    (r"^transformer\.decoder\.layers\.(\d+)\.ca_text\.out_proj\.", r"detr_decoder.layers.\1.text_cross_attn.o_proj."),
    (r"^transformer\.decoder\.layers\.(\d+)\.ca_text\.", r"detr_decoder.layers.\1.text_cross_attn."),
    (r"^transformer\.decoder\.layers\.(\d+)\.cross_attn\.out_proj\.",
     r"detr_decoder.layers.\1.vision_cross_attn.o_proj."),
    (r"^transformer\.decoder\.layers\.(\d+)\.cross_attn\.", r"detr_decoder.layers.\1.vision_cross_attn."),
    (r"^transformer\.decoder\.layers\.(\d+)\.linear1\.", r"detr_decoder.layers.\1.mlp.fc1."),
    (r"^transformer\.decoder\.layers\.(\d+)\.linear2\.", r"detr_decoder.layers.\1.mlp.fc2."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm1\.", r"detr_decoder.layers.\1.vision_cross_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.catext_norm\.", r"detr_decoder.layers.\1.text_cross_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm2\.", r"detr_decoder.layers.\1.self_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm3\.", r"detr_decoder.layers.\1.mlp_layer_norm."),
    # dot-product scoring
    (r"^dot_prod_scoring\.prompt_mlp\.layers\.0\.", r"dot_product_scoring.text_mlp.layer1."),
    (r"^dot_prod_scoring\.prompt_mlp\.layers\.1\.", r"dot_product_scoring.text_mlp.layer2."),
    (r"^dot_prod_scoring\.prompt_mlp\.out_norm\.", r"dot_product_scoring.text_mlp_out_norm."),
    (r"^dot_prod_scoring\.prompt_proj\.", r"dot_product_scoring.text_proj."),
    (r"^dot_prod_scoring\.hs_proj\.", r"dot_product_scoring.query_proj."),
    # mask decoder
    (r"^segmentation_head\.pixel_decoder\.conv_layers\.(\d+)\.", r"mask_decoder.pixel_decoder.conv_layers.\1."),
    (r"^segmentation_head\.pixel_decoder\.norms\.(\d+)\.", r"mask_decoder.pixel_decoder.norms.\1."),
    (r"^segmentation_head\.mask_embed\.layers\.(\d+)\.", r"mask_decoder.mask_embedder.layers.\1."),
    (r"^segmentation_head\.mask_predictor\.mask_embed\.layers\.(\d+)\.", r"mask_decoder.mask_embedder.layers.\1."),
    (r"^segmentation_head\.instance_seg_head\.", r"mask_decoder.instance_projection."),
    (r"^segmentation_head\.semantic_seg_head\.", r"mask_decoder.semantic_projection."),
    (r"^segmentation_head\.cross_attend_prompt\.out_proj\.", r"mask_decoder.prompt_cross_attn.o_proj."),
    (r"^segmentation_head\.cross_attend_prompt\.", r"mask_decoder.prompt_cross_attn."),
    (r"^segmentation_head\.cross_attn_norm\.", r"mask_decoder.prompt_cross_attn_norm."),
)
# fmt: on

_COMPILED = tuple((re.compile(pattern), replacement) for pattern, replacement in NATIVE_TO_HF_RULES)
QKV = ("q_proj", "k_proj", "v_proj")


def convert_key(native_key: str) -> str:
    """Apply every rule in order, as transformers' conversion does."""
    key = native_key
    for pattern, replacement in _COMPILED:
        key = pattern.sub(replacement, key)
    return key


@dataclass(frozen=True)
class Target:
    """One transformers weight a native linear maps to; ``part`` picks a third of a fused q/k/v output."""

    hf_key: str
    part: int | None = None  # None: the whole output; 0/1/2: the q/k/v third


def split_targets(hf_key: str) -> list[Target]:
    """transformers' ``split_qkv``: fused ``.attention.qkv.`` and packed ``in_proj_`` weights -> q/k/v."""
    if ".attention.qkv." in hf_key:
        return [Target(hf_key.replace(".qkv.", f".{name}."), i) for i, name in enumerate(QKV)]
    if hf_key.endswith("in_proj_weight"):
        base = hf_key[: -len("in_proj_weight")]
        return [Target(f"{base}{name}.weight", i) for i, name in enumerate(QKV)]
    return [Target(hf_key)]


def linear_candidates(native_module: str) -> list[list[Target]]:
    """Ways a native linear layer's weight can land in transformers, most direct first.

    A native ``<attn>.q_proj`` (``k_proj``, ``v_proj``) can be a plain linear, or a third of
    ``nn.MultiheadAttention``'s packed ``in_proj_weight`` that the LoRA code unpacked into its own
    linear: the latter is looked up as ``<attn>.in_proj_weight`` and its third taken.
    """
    candidates = [split_targets(convert_key(f"{native_module}.weight"))]
    parent, _, name = native_module.rpartition(".")
    if name in QKV and parent:
        part = QKV.index(name)
        packed = split_targets(convert_key(f"{parent}.in_proj_weight"))
        if len(packed) == 3:
            candidates.append([Target(packed[part].hf_key)])
    return candidates
