"""The demo: the whole recipe in miniature on this machine, nothing to download.

    python -m octomed_demo
    python -m octomed_demo --config.recipe.traces_per_question=1 --workdir=runs/demo_k1

`--config=NAME` (default `demo`) and `--config.x.y=v` overrides work as for `python -m octomed_jax.train`;
`--workdir` defaults to `runs/<recipe name>` (`runs/demo`). The traces are built into `<workdir>/data`
when missing; rerunning into a fresh workdir reproduces every figure of the report except the timings, and
rerunning the same command after an interruption resumes from the last checkpoint to the same report.
"""

from __future__ import annotations

import os
import sys

import ml_collections
from absl import flags

DEFAULT_CONFIG = "demo"


def define_flags(flag_values: flags.FlagValues) -> None:
    """The demo's flags besides `--config` (see `configs.cli`)."""
    flags.DEFINE_string("workdir", None, "Checkpoints, data, HF export and report (default: runs/<recipe name>).",
                        flag_values=flag_values)


def main(config: ml_collections.ConfigDict, flag_values: flags.FlagValues) -> None:
    """Loads the config's plugins, then runs the demo driver into the workdir."""
    from data_pipeline.build import RecipeError
    from data_pipeline.plugins import PluginError, load_plugins
    from octomed_demo.driver import run
    from octomed_jax.training.trainer import SetupError

    workdir = flag_values.workdir or os.path.join("runs", config.recipe.name)
    try:
        load_plugins(config.get("plugins", ()))
        run(config, workdir)
    except (PluginError, RecipeError, SetupError) as e:
        sys.exit(f"octomed_demo: {e}")
    except KeyboardInterrupt:
        sys.exit(f"octomed_demo: interrupted; rerun the same command to resume from the last checkpoint in {workdir} "
                 f"(saved every {config.checkpoint.every} steps)")


if __name__ == "__main__":
    from configs.cli import run_absl_cli

    run_absl_cli(main, program="octomed_demo", define_flags=define_flags, default_config=DEFAULT_CONFIG)
