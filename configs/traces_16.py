"""Traces ablation (MedQA): keep 16 accepted traces of 16 sampled per question, 3 epochs.

Paper (docs/paper.md, "Recipe levers"): MedQA, 16 responses per question, 1, 4 or 16 accepted traces kept, 3
epochs each; peak 85.01. Ablations trained at batch 128, warmup 1%. Ours: `eval.at_epoch_ends` evaluates after
every epoch, which gives the 1-epoch and 3-epoch points; the eval itself (benchmarks, sampling) is
`config.eval`'s. docs/experiments.md.
"""

from __future__ import annotations

import ml_collections

from configs import experiments


def get_config() -> ml_collections.ConfigDict:
    return experiments.traces_arm("traces_16", k=16)
