"""Filter ablation: keep questions the student (served at an endpoint) solves 2..14 times of 16."""

from __future__ import annotations

import ml_collections

from configs import full_mix


def get_config() -> ml_collections.ConfigDict:
    config = full_mix.get_config()
    r = config.recipe
    r.name = "filter_student_pass_rate"
    r.out_dir = "data/recipes/filter_student_pass_rate"
    r.filters.student_pass_rate.enabled = True
    return config
