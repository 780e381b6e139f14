"""Format ablation, CoT arm: chain-of-thought targets on the same 100k-question subset as `format_direct`.

Paper (docs/paper.md, "Recipe levers"): direct answer vs chain of thought on the same 100k subset of the
collected data; CoT lifts text 29.23 -> 52.19 and multimodal reasoning 23.08 -> 38.15, direct is slightly
ahead on classification (65.46 vs 63.33); ablations trained at batch 128, warmup 1% ("SFT hyperparameters").
Ours: the subset is `recipe.subset.questions` = 100,000 sampled from every source's pool, proportional by
source, classification stratified by class (data_pipeline/subset.py); K=1 in both arms, so both train on one
example per kept question (a direct target is one string per question); 3 epochs (`full_mix`'s; the paper
does not say). docs/experiments.md.
"""

from __future__ import annotations

import ml_collections

from configs import experiments


def get_config() -> ml_collections.ConfigDict:
    return experiments.format_arm("format_cot")  # full_mix's format is CoT
