"""The demo as a plugin: outside the production registries until a config lists it; then at both stages,
through the same `--config=NAME --config.x.y=v` command line."""

import json

import ml_collections
import pytest
from absl import flags

from configs import demo
from data_pipeline import build
from data_pipeline.build import RecipeError, run_build
from data_pipeline.plugins import PluginError, load_plugins
from data_pipeline.sources import SOURCES
from data_pipeline.teachers import TEACHER_KINDS
from octomed_demo import world

CATEGORIES = ("text", "mm_reasoning", "mm_classification")
NUM_TRAIN = 6
SMALL = [f"--config.recipe.sources.demo_{c}.options.num_train={NUM_TRAIN}" for c in CATEGORIES]


def test_registered_by_its_config_only():
    config = demo.get_config()  # importing the config and the world registers nothing
    assert "demo_world" not in SOURCES and "demo" not in TEACHER_KINDS
    assert config.plugins == ("octomed_demo",)
    load_plugins(config.plugins)
    load_plugins(config.plugins)  # again: idempotent
    assert SOURCES["demo_world"] is world.SOURCE_ADAPTER and TEACHER_KINDS["demo"] is world.DemoTeacher


def test_build_cli_loads_the_plugin_and_takes_overrides(tmp_path):
    build.main(["build", "--config=demo", *SMALL, "--config.recipe.traces_per_question=1", f"--out={tmp_path}",
                "--no_progress"])
    m = json.load(open(tmp_path / "manifest.json"))
    assert m["recipe"]["traces_per_question"] == 1
    for c in CATEGORIES:
        s = m["sources"][f"demo_{c}"]["categories"][c]
        assert s["questions_in"] == NUM_TRAIN and s["samples"] == NUM_TRAIN * 8  # 8 teacher samples each
        assert s["traces_kept"] == s["questions_kept"] >= 1  # K = 1: one trace per kept question


def test_without_the_plugin_the_build_names_the_field(tmp_path):
    config = demo.get_config()
    config.plugins = ()
    with pytest.raises(RecipeError, match=r"recipe\.sources\.demo_\w+\.adapter = 'demo_world'.*config\.plugins"):
        run_build(config, out_dir=str(tmp_path), progress=False, log=lambda s: None)
    config.recipe.sources = ml_collections.ConfigDict()
    with pytest.raises(RecipeError, match=r"recipe\.teachers\.\w+\.kind = 'demo' .*config\.plugins"):
        run_build(config, out_dir=str(tmp_path), progress=False, log=lambda s: None)


def test_plugin_errors_name_the_config_field():
    with pytest.raises(PluginError, match=r"config\.plugins: no module named 'octomed_dmeo'"):
        load_plugins(["octomed_dmeo"])
    with pytest.raises(PluginError, match=r"config\.plugins: module 'octomed_demo\.world' has no register\(\)"):
        load_plugins(["octomed_demo.world"])
    with pytest.raises(PluginError, match="not the string"):
        load_plugins("octomed_demo")
    assert "demo_world" not in SOURCES


def test_train_loads_the_plugins_before_training(tmp_path):
    from octomed_jax import train

    flag_values = flags.FlagValues()
    train.define_flags(flag_values)
    flag_values(["train", f"--workdir={tmp_path}"])
    config = demo.get_config()
    config.data.data_dir = str(tmp_path / "no_data")
    config.plugins = ("octomed_dmeo",)
    with pytest.raises(SystemExit, match=r"^train: config\.plugins: no module named 'octomed_dmeo'"):
        train.main(config, flag_values)
    config.plugins = ("octomed_demo",)
    with pytest.raises(SystemExit, match="no accepted traces"):  # a plain training run: the data must exist
        train.main(config, flag_values)
    assert "demo_world" in SOURCES
