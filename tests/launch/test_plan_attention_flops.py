"""The plan's analytic attention FLOPs (`planning.attention_flops`): exact counts on a tiny model, no compile."""

import pytest

from octomed_jax import planning
from octomed_jax.models.config import get_preset

# Text: 2 layers, 4 heads x 16 = 64 wide. Vision: 4 blocks (2 full, 2 windowed) 32 wide, windows of 16 patches.
# 300 tokens on tiles 128 x 256 pad to 512: causal tiles per 128-query stripe 1, 1, 2, 2 = 6 of 32768 scores.
# 100 patches pad to one 128 x 128 tile. Under remat a flash kernel runs 2 + 2 + 7 = 11 matmuls, the
# masked XLA path 2 + 2 + 4 = 8; without remat 9 and 6.
TINY = get_preset("tiny", attention_block_q=128, attention_block_kv=256)
MODEL = 2 * 6 * 300 * 300 * 64 + 2 * 6 * 100 * 32 * (2 * 16 + 2 * 100)
WINDOWED = 2 * 2 * 100 * 3 * 16 * 32  # 2 blocks x 2 FLOPs x patches x 3 windows of keys x width, per matmul


@pytest.mark.parametrize("policy, flash, dense", [("nothing_saveable", 11, 8), ("none", 9, 6)])
def test_attention_flops_exact(policy, flash, dense):
    cfg = TINY.replace(remat_policy=policy)
    kernel = flash * (2 * 2 * 6 * 128 * 256 * 64 + 2 * 2 * 128 * 128 * 32)
    assert planning.attention_flops(cfg, 300, 100, "splash") == {
        "model": MODEL, "kernel": kernel, "executed": kernel + dense * WINDOWED}
    assert planning.attention_flops(cfg, 300, 100, "xla") == {
        "model": MODEL, "kernel": 0,
        "executed": dense * (2 * 2 * 300 * 300 * 64 + 2 * 2 * 100 * 100 * 32 + WINDOWED)}


def test_vision_full_blocks_within_image_bins():
    """With the data's bound on an image (120 patches -> 15 bins of 128 in a row of 1,024), each full block's
    kernel runs 15 single-tile bins instead of the 8 x 8 tiles of the row; the model FLOPs are the same."""
    cfg = TINY.replace(remat_policy="none")
    row = planning.attention_flops(cfg, 300, 1024, "splash")
    bins = planning.attention_flops(cfg, 300, 1024, "splash", 120)
    vision_tile = 9 * 2 * 2 * 128 * 128 * 32  # 9 matmuls, 2 full blocks
    assert row["kernel"] - bins["kernel"] == vision_tile * (8 * 8 - 15)
    assert row["model"] == bins["model"]


@pytest.mark.parametrize("preset, patches, small", [("7b", 1296, 64), ("qwen3_vl_8b", 1024, 64),
                                                    ("internvl3_5_8b", 1024, 1024)])
def test_patches_per_image_by_family(preset, patches, small):
    """512 x 512 at max_pixels 262,144: 36^2 patches of 14 px, 32^2 of 16 px, one 448-px tile of 32^2; at
    128 x 128 pixels (512 / 4, rounded down to the 28- or 32-px grid): 8^2 patches of either; InternVL tiles
    the image as before."""
    from configs import full_mix

    config = full_mix.get_config()
    assert planning.patches_per_image(get_preset(preset), config) == patches
    config.recipe.images.max_pixels = 128 * 128
    assert planning.patches_per_image(get_preset(preset), config) == small


def test_model_attention_matches_train_flops_and_causal_tiles():
    assert planning.attention_flops(TINY, 300, 0, "splash")["model"] == planning._text_attention_flops(TINY, 300)
    assert planning._flash_blocks(8192, 512, 512, causal=True) == 16 * 17 // 2
    assert planning._flash_blocks(8192, 512, 512, causal=False) == 256


def test_a_compiler_without_a_time_falls_back_to_the_analytic_roofline():
    """libtpu answers a negative optimal_seconds for v6e: the cost leaves it out, the layered total is then
    None, and the TPU step estimate is the analytic roofline, said so."""

    class Compiled:
        def __init__(self, seconds):
            self.seconds = seconds

        def cost_analysis(self):
            return {"flops": 3e13, "bytes accessed": 1e11, "optimal_seconds": self.seconds, "utilization": 1.0}

    assert planning._cost(Compiled(-57.9)) == {"flops": 3e13, "bytes accessed": 1e11}
    assert planning._cost(Compiled(0.25)) == {"flops": 3e13, "bytes accessed": 1e11, "optimal_seconds": 0.25}
    assert planning._step_estimate("tpu", 9.65, 8.1, 0.0) == (9.65, planning.STEP_FROM_COMPILER)
    seconds, source = planning._step_estimate("tpu", None, 2.56, 0.0)
    assert seconds == 2.56 and source.startswith("analytic roofline")
    seconds, source = planning._step_estimate("gpu", None, 3.77, 8.65)
    assert seconds == 8.65 and "measured" in source
