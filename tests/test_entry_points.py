"""Every command-line entry point: importing them all together defines no flag, and each one's flags can be
defined beside the others' (no module defines absl flags at import time)."""

import importlib

import pytest
from absl import flags

# module -> its function that defines the CLI's flags on a FlagValues
ENTRY_POINTS = {
    "octomed_jax.train": "define_flags",
    "octomed_jax.evaluate": "define_flags",
    "octomed_jax.serve": "define_flags",
    "octomed_jax.export": "define_flags",
    "octomed_jax.plan": "_define_flags",
    "data_pipeline.build": "define_flags",
    "data_pipeline.tfds_dataset": "define_flags",
    "octomed_demo.__main__": "define_flags",
    "octomed_demo.experiments": "define_flags",
}


OURS = ("octomed_jax", "data_pipeline", "octomed_demo", "configs")


def test_importing_every_entry_point_defines_no_flag():
    modules = [importlib.import_module(name) for name in ENTRY_POINTS]
    # Libraries (absl logging, grain, orbax) define theirs at import; none of ours may.
    ours = [m for m in flags.FLAGS.flags_by_module_dict() if m.split(".")[0] in OURS]
    assert ours == [] and "config" not in flags.FLAGS and "checkpoint" not in flags.FLAGS
    # A program still gets its own flags, on a FlagValues of its own, whatever else was imported.
    for module, define in zip(modules, ENTRY_POINTS.values(), strict=True):
        fv = flags.FlagValues()
        getattr(module, define)(fv)
        assert len(list(fv)) >= 1, module.__name__


@pytest.mark.parametrize("name", ["octomed_jax.evaluate", "octomed_jax.serve", "octomed_jax.export"])
def test_checkpoint_clis_parse_their_own_flags(name):
    module = importlib.import_module(name)
    fv = flags.FlagValues()
    module.define_flags(fv)
    fv([name, "--checkpoint=runs/x/checkpoints/2", *(["--to=hf", "--out=o"] if name.endswith("export") else [])])
    assert fv.checkpoint == "runs/x/checkpoints/2"
