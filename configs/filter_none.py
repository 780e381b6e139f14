"""Filter ablation: no question filter (the final recipe's choice)."""

from __future__ import annotations

import ml_collections

from configs import full_mix


def get_config() -> ml_collections.ConfigDict:
    config = full_mix.get_config()
    r = config.recipe
    r.name = "filter_none"
    r.out_dir = "data/recipes/filter_none"
    return config
