"""Format ablation, direct arm: the answer line alone, on the same 100k-question subset as `format_cot`.

Paper (docs/paper.md, "Recipe levers"): direct answer vs chain of thought on the same 100k subset; direct
scores 29.23 (text), 23.08 (multimodal reasoning), 65.46 (classification). Ours: as `format_cot` except the
response format. The teacher is still sampled, so both arms keep the same questions (those with a correct
trace); one trace per question (K=1), since all correct direct targets of a question are the same string.
docs/experiments.md.
"""

from __future__ import annotations

import ml_collections

from configs import base, experiments


def get_config() -> ml_collections.ConfigDict:
    config = experiments.format_arm("format_direct")
    config.recipe.response_format = ml_collections.ConfigDict({c: "direct" for c in base.CATEGORIES})
    return config
