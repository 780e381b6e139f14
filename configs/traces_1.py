"""Traces ablation (MedQA): keep 1 accepted trace of 16 sampled."""

from __future__ import annotations

import ml_collections

from configs import full_mix


def get_config() -> ml_collections.ConfigDict:
    config = full_mix.get_config()
    r = config.recipe
    r.name = "traces_1"
    r.out_dir = "data/recipes/traces_1"
    r.sources = ml_collections.ConfigDict({"medqa": r.sources.medqa})
    r.traces_per_question = 1
    return config
