"""Format ablation: direct answers (the answer line only) on the same 100k subset as format_cot.

The teacher is still sampled so that both arms keep the same questions (those with a correct trace)."""

from __future__ import annotations

import ml_collections

from configs import full_mix

# 100k questions over the 11 sources, as in the paper's format ablation (same seed -> same subset).
SUBSET_PER_SOURCE = 100_000 // 11 + 1


def get_config() -> ml_collections.ConfigDict:
    config = full_mix.get_config()
    r = config.recipe
    r.name = "format_direct"
    r.out_dir = "data/recipes/format_direct"
    for s in r.sources.values():
        s.max_questions = SUBSET_PER_SOURCE
    r.response_format = ml_collections.ConfigDict({c: "direct" for c in r.response_format})
    return config
