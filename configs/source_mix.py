"""Source ablation, the mixed arm: every source of `full_mix`, at the ablations' training settings.

Paper (docs/paper.md, "Recipe levers"): each source category alone and mixed; the mix is consistent
everywhere without hurting any category. This arm is `full_mix` with the ablation batch (128 examples) and
warmup (1%), so it compares with `text_only`, `mm_reasoning_only` and `classification_only` in the sources
alone. docs/experiments.md.
"""

from __future__ import annotations

import ml_collections

from configs import experiments


def get_config() -> ml_collections.ConfigDict:
    return experiments.arm("source_mix")
