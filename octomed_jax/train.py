"""Train the student on a recipe's accepted traces.

  python -m octomed_jax.train --config=full_mix --workdir=runs/full_mix
  python -m octomed_jax.train --config=traces_4 --config.train.num_steps=2000 --config.mesh.tensor=4
  python -m octomed_jax.train --config=demo        # the whole recipe in miniature, nothing to download

`--config=NAME` selects `configs/NAME.py` (or give a path); `--config.some.field=value` overrides any
field. Rerunning the same command resumes from the latest checkpoint in `--workdir`.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config name in configs/ (e.g. full_mix) or a path.")
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and the HF export (default: runs/<recipe name>).")
FLAGS = flags.FLAGS


def resolve_config_argument(argv: list[str]) -> list[str]:
    """`--config=NAME` -> `--config=<configs dir>/NAME.py`, keeping any `:argument` suffix."""
    import configs

    configs_dir = os.path.dirname(configs.__file__)
    out = []
    for arg in argv:
        if arg.startswith("--config=") and not arg.split("=", 1)[1].split(":")[0].endswith(".py"):
            name, _, rest = arg.split("=", 1)[1].partition(":")
            path = os.path.join(configs_dir, f"{name}.py")
            if not os.path.exists(path):
                known = sorted(f[:-3] for f in os.listdir(configs_dir) if f.endswith(".py") and not f.startswith("_"))
                sys.exit(f"train: unknown config {name!r}; known: {', '.join(known)}")
            arg = f"--config={path}" + (f":{rest}" if rest else "")
        out.append(arg)
    return out


def main(argv: list[str]) -> None:
    del argv
    from octomed_jax.training.trainer import SetupError, train

    config = _CONFIG.value
    workdir = FLAGS.workdir or os.path.join("runs", config.recipe.name)
    entry = getattr(config, "entry", None)  # the demo runs its own driver around the same train()
    try:
        if entry:
            import importlib

            module, fn = entry.rsplit(":", 1)
            summary = getattr(importlib.import_module(module), fn)(config, workdir)
        else:
            summary = train(config, workdir)
    except SetupError as e:
        sys.exit(f"train: {e}")
    logging.info("summary: %s", json.dumps({k: v for k, v in summary.items() if k != "losses"}, default=str))


if __name__ == "__main__":
    app.run(main, argv=resolve_config_argument(sys.argv))
