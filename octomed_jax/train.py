"""Train the student on a recipe's accepted traces.

  python -m octomed_jax.train --config=full_mix --workdir=runs/full_mix
  python -m octomed_jax.train --config=traces_4 --config.train.num_steps=2000 --config.mesh.tensor=4

`--config=NAME` selects `configs/NAME.py` (or give a path); `--config.some.field=value` overrides any
field, as for `python -m data_pipeline.build` (`configs.cli`). The config's `plugins` are loaded first.
Rerunning the same command resumes from the latest checkpoint in `--workdir`. The demo (build, train,
evaluate and report in one command) is `python -m octomed_demo`.
"""

from __future__ import annotations

import json
import os
import sys

import ml_collections
from absl import flags, logging


def define_flags(flag_values: flags.FlagValues) -> None:
    """The trainer's flags besides `--config` (see `configs.cli`)."""
    flags.DEFINE_string("workdir", None, "Checkpoints, metrics and the HF export (default: runs/<recipe name>).",
                        flag_values=flag_values)


def main(config: ml_collections.ConfigDict, flag_values: flags.FlagValues) -> None:
    """Loads the config's plugins, then trains into `--workdir`; a setup problem exits with its message."""
    from data_pipeline.plugins import PluginError, load_plugins
    from data_pipeline.storage import ManifestError, StorageError
    from octomed_jax.checkpoint import CheckpointError
    from octomed_jax.contract import ContractError
    from octomed_jax.data.checkpointing import DataStateError
    from octomed_jax.training.trainer import SetupError, train

    workdir = flag_values.workdir or os.path.join("runs", config.recipe.name)
    try:
        load_plugins(config.get("plugins", ()))
        summary = train(config, workdir)
    # Each names the file or setting at fault and what to do: one line, no traceback.
    except (PluginError, SetupError, ManifestError, StorageError, DataStateError, CheckpointError, ContractError) as e:
        sys.exit(f"train: {e}")
    logging.info("summary: %s", json.dumps({k: v for k, v in summary.items() if k != "losses"}, default=str))


if __name__ == "__main__":
    from configs.cli import run_absl_cli

    run_absl_cli(main, program="train", define_flags=define_flags)
