"""Traces ablation (MedQA): keep 16 accepted traces of 16 sampled."""

from __future__ import annotations

import ml_collections

from configs import full_mix


def get_config() -> ml_collections.ConfigDict:
    config = full_mix.get_config()
    r = config.recipe
    r.name = "traces_16"
    r.out_dir = "data/recipes/traces_16"
    r.sources = ml_collections.ConfigDict({"medqa": r.sources.medqa})
    r.traces_per_question = 16
    return config
