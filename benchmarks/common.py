"""What the benchmarks share: one small model of a family (Qwen2.5-VL, Qwen3-VL, InternVL) built by transformers and
loaded into ours."""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Any

import torch
import transformers

from octomed_jax.hf import load_hf
from octomed_jax.models.config import ModelConfig, get_preset, to_hf_dict

# Each family's tiny preset (full vocabulary) and transformers' config and model classes.
FAMILY_MODELS = {
    "qwen2_5_vl": ("tiny", "Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration"),
    "qwen3_vl": ("qwen3_vl_tiny", "Qwen3VLConfig", "Qwen3VLForConditionalGeneration"),
    "internvl": ("internvl_tiny", "InternVLConfig", "InternVLForConditionalGeneration"),
}


def small_config(layers: int, width: int, family: str = "qwen2_5_vl") -> ModelConfig:
    """The family's tiny preset (full vocabulary) with `layers` decoder layers of `width` (16-wide heads)."""
    base = get_preset(FAMILY_MODELS[family][0])
    text = dataclasses.replace(base.text, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                               num_attention_heads=width // 16, num_key_value_heads=width // 32)
    return base.replace(text=text, vision=dataclasses.replace(base.vision, out_hidden_size=width))


def same_model_both_sides(cfg: ModelConfig, seed: int = 0) -> tuple[Any, Any]:
    """(transformers model, our model with the same weights, loaded from the folder transformers saved)."""
    _, config_class, model_class = FAMILY_MODELS[cfg.family]
    hcfg = getattr(transformers, config_class)(**{k: v for k, v in to_hf_dict(cfg).items()
                                                  if k not in ("architectures", "model_type")})
    torch.manual_seed(seed)
    hf = getattr(transformers, model_class)(hcfg)
    folder = tempfile.mkdtemp()
    hf.save_pretrained(folder)
    return hf, load_hf(folder)
