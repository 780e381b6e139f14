"""Teacher ablation (text), R1 arm: DeepSeek-R1 traces for about 30k text questions, 1 epoch.

Paper (docs/paper.md, "Recipe levers"): DeepSeek-R1 vs GPT-4o as the text teacher, about 30k text examples
and one epoch; R1 gives larger gains on every text task. Ours: a 30k-question subset of MedQA, MedMCQA and
HeadQA (`recipe.subset`, proportional by source), K=1 so about 30k examples (questions without a correct
trace drop out, per teacher); 16 samples per question as in the recipe (the paper does not say).
docs/experiments.md.
"""

from __future__ import annotations

import ml_collections

from configs import experiments


def get_config() -> ml_collections.ConfigDict:
    return experiments.teacher_arm("teacher_r1")  # full_mix's text teacher is R1
