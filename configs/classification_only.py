"""Source ablation: multimodal classification sets alone.

Paper (docs/paper.md, "Recipe levers"): each source category alone and mixed; a source helps the tasks it
resembles most, text is the strongest single source, the mix is consistent everywhere. Ablations trained at
batch 128, warmup 1%. Ours: every question of the category's sources, K=16, 3 epochs (as `full_mix`; the
paper's sizes for this ablation are not in docs/paper.md). docs/experiments.md.
"""

from __future__ import annotations

import ml_collections

from configs import experiments, full_mix


def get_config() -> ml_collections.ConfigDict:
    return experiments.arm("classification_only", full_mix.CLASSIFICATION_SOURCES)
