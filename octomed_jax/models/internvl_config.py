"""config.json of transformers' `InternVLForConditionalGeneration` (`model_type` internvl) <-> our ModelConfig.

InternVL3.5's "-HF" checkpoints: a `text_config` of `model_type` qwen3 and an `internvl_vision` `vision_config`.
What our model does not implement is refused with the field named (another language model, a projector or
vision activation other than GELU, features from another layer than the last, a final vision norm, mask
tokens, rotary scaling, sliding windows). `models.config.from_hf_dict` / `to_hf_dict` call these for the family.
"""

from __future__ import annotations

from typing import Any

from octomed_jax.data.tokenizer import SpecialIds
from octomed_jax.models.config import ModelConfig, TextConfig, VisionConfig

# (field, the value we implement, its default in transformers' classes) per section of config.json.
_REQUIRED = {
    "": (("vision_feature_layer", -1, -1), ("vision_feature_select_strategy", "default", "default"),
         ("projector_hidden_act", "gelu", "gelu")),
    "text_config": (("model_type", "qwen3", "qwen2"), ("hidden_act", "silu", "silu"),
                    ("attention_bias", False, False), ("use_sliding_window", False, False)),
    "vision_config": (("hidden_act", "gelu", "gelu"), ("use_mean_pooling", True, True),
                      ("use_mask_token", False, False), ("use_absolute_position_embeddings", True, True)),
}


def _square(value: Any, name: str) -> int:
    """An int, or a [h, w] pair with h == w (transformers writes both)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"vision_config.{name} {value}: only square tiles and patches are supported")
        value = value[0]
    return int(value)


def from_hf_dict(d: dict[str, Any], **overrides: Any) -> ModelConfig:
    """Our ModelConfig of an InternVL config.json.

    Raises:
      ValueError: a field names something our model does not implement (the message names it).
    """
    t, v = dict(d.get("text_config") or {}), dict(d.get("vision_config") or {})
    sections = {"": d, "text_config": t, "vision_config": v}
    for section, fields in _REQUIRED.items():
        for name, want, default in fields:
            found = sections[section].get(name, default)
            if found != want:
                where = f"{section}.{name}" if section else name
                raise ValueError(f"{where} is {found!r}: the internvl family implements {want!r} only")
    rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"text_config rope_type {rope.get('rope_type')!r}: only the default (unscaled) RoPE")
    merge = round(1 / d.get("downsample_ratio", 0.5))
    if merge * d.get("downsample_ratio", 0.5) != 1:
        raise ValueError(f"downsample_ratio {d['downsample_ratio']}: need 1 / an integer")
    head_dim = t.get("head_dim", 128)
    # The top-level flag is the one transformers ties by; the text model's own is the fallback (InternVL's
    # converter copies the language model's config, so a -HF file may carry only that one).
    tie = d.get("tie_word_embeddings", t.get("tie_word_embeddings", False))
    text = TextConfig(
        vocab_size=t.get("vocab_size", 151936),
        hidden_size=t.get("hidden_size", 4096),
        intermediate_size=t.get("intermediate_size", 22016),
        num_hidden_layers=t.get("num_hidden_layers", 32),
        num_attention_heads=t.get("num_attention_heads", 32),
        num_key_value_heads=t.get("num_key_value_heads") or t.get("num_attention_heads", 32),
        rms_norm_eps=t.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", t.get("rope_theta", 10000.0))),
        mrope_section=(head_dim // 2, 0, 0),  # 1-D RoPE: every frequency follows the (one) position
        max_position_embeddings=t.get("max_position_embeddings", 32768),
        tie_word_embeddings=bool(tie),
        attention_head_dim=head_dim,
    )
    vision = VisionConfig(
        depth=v.get("num_hidden_layers", 24),
        hidden_size=v.get("hidden_size", 1024),
        intermediate_size=v.get("intermediate_size", 4096),
        num_heads=v.get("num_attention_heads", 16),
        in_channels=v.get("num_channels", 3),
        patch_size=_square(v.get("patch_size", 14), "patch_size"),
        temporal_patch_size=1,
        spatial_merge_size=merge,
        out_hidden_size=text.hidden_size,
        fullatt_block_indexes=(),
        rms_norm_eps=v.get("layer_norm_eps", 1e-6),
        image_size=_square(v.get("image_size", 448), "image_size"),
        use_qk_norm=bool(v.get("use_qk_norm", False)),
        norm_type=v.get("norm_type", "layer_norm"),
        attention_bias=bool(v.get("attention_bias", False)),
    )
    ids = {"image_token_id": d.get("image_token_id", 151667)}
    return ModelConfig(text=text, vision=vision, family="internvl", **ids, **overrides)


def to_hf_dict(cfg: ModelConfig, *, torch_dtype: str, special_ids: SpecialIds) -> dict[str, Any]:
    """A config.json that `InternVLForConditionalGeneration` loads without warnings (every field explicit)."""
    t, v = cfg.text, cfg.vision
    text_config = {
        "model_type": "qwen3",
        "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads,
        "num_key_value_heads": t.num_key_value_heads,
        "head_dim": t.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": t.rms_norm_eps,
        "max_position_embeddings": t.max_position_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta},
        "attention_bias": False,
        "use_sliding_window": False,
        "tie_word_embeddings": t.tie_word_embeddings,
        "bos_token_id": special_ids.endoftext,
        "eos_token_id": special_ids.im_end,
        "dtype": torch_dtype,
    }
    vision_config = {
        "model_type": "internvl_vision",
        "hidden_size": v.hidden_size,
        "num_hidden_layers": v.depth,
        "num_attention_heads": v.num_heads,
        "intermediate_size": v.intermediate_size,
        "hidden_act": "gelu",
        "num_channels": v.in_channels,
        "image_size": [v.image_size, v.image_size],
        "patch_size": [v.patch_size, v.patch_size],
        "norm_type": v.norm_type,
        "layer_norm_eps": v.rms_norm_eps,
        "use_qk_norm": v.use_qk_norm,
        "attention_bias": v.attention_bias,
        "use_mean_pooling": True,
        "use_mask_token": False,
        "use_absolute_position_embeddings": True,
    }
    return {
        "architectures": ["InternVLForConditionalGeneration"],
        "model_type": "internvl",
        "text_config": text_config,
        "vision_config": vision_config,
        "downsample_ratio": 1 / v.spatial_merge_size,
        "image_seq_length": v.num_tile_patches // v.merge_unit,
        "image_token_id": cfg.image_token_id,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": t.tie_word_embeddings,
        "dtype": torch_dtype,
    }


__all__ = ["from_hf_dict", "to_hf_dict"]
