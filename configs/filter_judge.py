"""Filter ablation (PMC-VQA): keep questions an LLM judge rates 3..6 of 10 in difficulty.

Paper (docs/paper.md, "Recipe levers"): student pass rate, teacher pass rate and LLM-judge difficulty
filters on PMC-VQA; filters make early training more sample-efficient, unfiltered data reaches the same peak.
Ablations trained at batch 128, warmup 1%. Ours: PMC-VQA's whole training split, K=16 and 3 epochs (as
`full_mix`; the paper does not say). docs/experiments.md.
"""

from __future__ import annotations

import ml_collections

from configs import experiments


def get_config() -> ml_collections.ConfigDict:
    config = experiments.filter_arm("filter_judge")
    config.recipe.filters.judge.enabled = True
    return config
