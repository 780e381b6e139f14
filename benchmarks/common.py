"""What the benchmarks share: one small Qwen2.5-VL built by transformers and loaded into ours."""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Any

import torch
import transformers

from octomed_jax.hf import load_hf
from octomed_jax.models.config import ModelConfig, get_preset, to_hf_dict


def small_config(layers: int, width: int) -> ModelConfig:
    """The `tiny` preset (full vocabulary, tied embeddings) with `layers` decoder layers of `width`."""
    base = get_preset("tiny")
    text = dataclasses.replace(base.text, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                               num_attention_heads=width // 16, num_key_value_heads=width // 32)
    return base.replace(text=text, vision=dataclasses.replace(base.vision, out_hidden_size=width))


def same_model_both_sides(cfg: ModelConfig, seed: int = 0) -> tuple[Any, Any]:
    """(transformers model, our model with the same weights, loaded from the folder transformers saved)."""
    hcfg = transformers.Qwen2_5_VLConfig(**{k: v for k, v in to_hf_dict(cfg).items()
                                            if k not in ("architectures", "model_type")})
    torch.manual_seed(seed)
    hf = transformers.Qwen2_5_VLForConditionalGeneration(hcfg)
    folder = tempfile.mkdtemp()
    hf.save_pretrained(folder)
    return hf, load_hf(folder)
