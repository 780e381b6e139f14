"""configs/full_mix_internvl.py is full_mix with the student swapped and a row's image budget in whole tiles."""

from configs import experiments, full_mix, full_mix_internvl
from octomed_jax.contract import RunContract


def test_full_mix_internvl_differs_from_full_mix_only_in_the_student():
    config = full_mix_internvl.get_config()
    assert experiments.diff(config, full_mix.get_config()) == {
        "data.max_patches": 16384, "init_from": "checkpoints/InternVL3_5-8B-HF", "model.family": "internvl",
        "model.preset": "internvl3_5_8b"}
    contract = RunContract.from_config(config)
    model = contract.model
    assert (model.family, model.text.num_hidden_layers, model.text.head_dim, model.vision.image_size) == (
        "internvl", 36, 128, 448)
    # The largest image (12 tiles + thumbnail) fits a row; rows hold whole tiles.
    assert config.data.max_patches % model.vision.num_tile_patches == 0
    assert config.data.max_patches >= (contract.preprocessing.max_tiles + 1) * model.vision.num_tile_patches


def test_max_tiles_is_a_listed_recipe_option():
    """`recipe.images.max_tiles` is in the base config (the InternVL processor's default), and an override
    reaches the run's preprocessing."""
    from octomed_jax.data.internvl_images import MAX_TILES

    config = full_mix_internvl.get_config()
    assert config.recipe.images.max_tiles == MAX_TILES == RunContract.from_config(config).preprocessing.max_tiles
    config.recipe.images.max_tiles = 6
    assert RunContract.from_config(config).preprocessing.max_tiles == 6
