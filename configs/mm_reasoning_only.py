"""Source ablation: multimodal reasoning (PMC-VQA, SLAKE, VQA-RAD) alone."""

from __future__ import annotations

import ml_collections

from configs import full_mix


def get_config() -> ml_collections.ConfigDict:
    config = full_mix.get_config()
    r = config.recipe
    r.name = "mm_reasoning_only"
    r.out_dir = "data/recipes/mm_reasoning_only"
    r.sources = ml_collections.ConfigDict({k: v for k, v in r.sources.items() if k in full_mix.MM_REASONING_SOURCES})
    return config
