"""Source ablation: text-only QA (MedQA, MedMCQA, HeadQA) alone."""

from __future__ import annotations

import ml_collections

from configs import full_mix


def get_config() -> ml_collections.ConfigDict:
    config = full_mix.get_config()
    r = config.recipe
    r.name = "text_only"
    r.out_dir = "data/recipes/text_only"
    r.sources = ml_collections.ConfigDict({k: v for k, v in r.sources.items() if k in full_mix.TEXT_SOURCES})
    return config
