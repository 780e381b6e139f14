"""Teacher ablation (text), GPT-4o arm: GPT-4o traces for the same 30k text questions as `teacher_r1`, 1 epoch.

Paper (docs/paper.md, "Recipe levers"): GPT-4o as the text teacher, about 30k text examples, one epoch. Ours:
as `teacher_r1` except the text teacher (GPT-4o prompted for step-by-step reasoning, `configs/base.py`).
docs/experiments.md.
"""

from __future__ import annotations

import ml_collections

from configs import base, experiments


def get_config() -> ml_collections.ConfigDict:
    config = experiments.teacher_arm("teacher_gpt4o")
    config.recipe.teachers.text = base.gpt_4o()
    return config
