"""The final OctoMed recipe on InternVL3.5-8B (the "-HF" checkpoint), the paper's second student (docs/paper.md):
full_mix with the student swapped, and a row's image budget in whole tiles.

The data recipe is full_mix's, name and folder included (`recipe.name`, `recipe.out_dir`): one build serves every
student. InternVL cuts each image into 448-pixel tiles plus a thumbnail (1 to `max_tiles` = 12 tiles, as
InternVL3.5's processor; `octomed_jax.data.internvl_images`), 1,024 patches and 256 `<IMG_CONTEXT>` tokens each;
the recipe's pixel bounds do not apply to it. `data.max_patches` is 16,384 patches = 16 tiles per packed row, so
the largest image (12 tiles + thumbnail) fits a row (full_mix's 8,192 would drop it as `too_many_patches`).

Training settings are full_mix's (FSDP over every device, `dots_with_no_batch_dims_saveable`); the plan for
v5p:2x2x2: `python -m octomed_jax.plan --config=full_mix_internvl --topology=v5p:2x2x2`.
"""

from __future__ import annotations

import ml_collections

from configs import full_mix

TILE_PATCHES = (448 // 14) ** 2  # patches of one InternViT tile


def get_config() -> ml_collections.ConfigDict:
    config = full_mix.get_config()
    config.model.update(family="internvl", preset="internvl3_5_8b")
    config.data.max_patches = 16 * TILE_PATCHES
    config.init_from = "checkpoints/InternVL3_5-8B-HF"  # the public HF checkpoint, downloaded by the user
    return config
