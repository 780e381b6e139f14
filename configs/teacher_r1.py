"""Teacher ablation (text): DeepSeek-R1 as the text teacher."""

from __future__ import annotations

import ml_collections

from configs import base, full_mix


def get_config() -> ml_collections.ConfigDict:
    config = full_mix.get_config()
    r = config.recipe
    r.name = "teacher_r1"
    r.out_dir = "data/recipes/teacher_r1"
    r.sources = ml_collections.ConfigDict({k: v for k, v in r.sources.items() if k in full_mix.TEXT_SOURCES})
    r.teachers.text = base.deepseek_r1()
    return config
