"""The final OctoMed recipe on Qwen3-VL-8B-Instruct, the paper's third student (docs/paper.md): full_mix with
the student swapped, nothing else.

The data recipe is full_mix's, name and folder included (`recipe.name`, `recipe.out_dir`): one build serves
both students, and the packed rows differ only by the family's image patches (16 pixels, mean = std = 0.5;
`octomed_jax.data.images.family_options`), decided at training time. Images keep the recipe's 512 x 512 cap
and its min_pixels (56 x 56; Qwen3-VL's own processor would scale images below 256 x 256 up).

Training settings are full_mix's (FSDP over every device, `dots_with_no_batch_dims_saveable`); the plan for
v5p:2x2x2: `python -m octomed_jax.plan --config=full_mix_qwen3_vl --topology=v5p:2x2x2` (docs/scale_out.md).
"""

from __future__ import annotations

import ml_collections

from configs import full_mix


def get_config() -> ml_collections.ConfigDict:
    config = full_mix.get_config()
    config.model.update(family="qwen3_vl", preset="qwen3_vl_8b")
    config.init_from = "checkpoints/Qwen3-VL-8B-Instruct"  # the public HF checkpoint, downloaded by the user
    return config
