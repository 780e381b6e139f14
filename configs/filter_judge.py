"""Filter ablation: keep questions an LLM judge rates 3..6 of 10 in difficulty."""

from __future__ import annotations

import ml_collections

from configs import full_mix


def get_config() -> ml_collections.ConfigDict:
    config = full_mix.get_config()
    r = config.recipe
    r.name = "filter_judge"
    r.out_dir = "data/recipes/filter_judge"
    r.filters.judge.enabled = True
    return config
