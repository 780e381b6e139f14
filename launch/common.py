"""What every cluster launcher shares: one config name plus overrides -> the training command.

Each launcher (`slurm.py`, `tpu_pod.py`, `jobset.py`) is called as
`python launch/<launcher>.py [launcher options] --config=NAME [--config.a.b=v ...] [--workdir=DIR] [--dry_run]`
and runs (or, with `--dry_run`, prints) `python -m octomed_jax.train --config=NAME ...` on every host.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence

TRAIN_MODULE = "octomed_jax.train"
DEFAULT_PORT = 8476  # the coordinator's port (JAX's customary one)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="config name in configs/ (e.g. full_mix)")
    parser.add_argument("--workdir", default="", help="checkpoints and metrics (default: the trainer's)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands and environment, run nothing")


def parse_launcher_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> tuple[argparse.Namespace, list[str]]:
    """Parses the launcher's own options; `--config.x.y=v` overrides are passed through to the trainer.

    Returns:
      (options, overrides) with the overrides in the order given.
    """
    add_common_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognised arguments {unknown}; trainer overrides look like --config.train.num_steps=100")
    return args, list(rest)


def train_argv(config: str, overrides: Sequence[str], workdir: str = "", python: str = "python") -> list[str]:
    """`python -m octomed_jax.train --config=NAME [overrides] [--workdir=DIR]` as an argv list."""
    argv = [python, "-m", TRAIN_MODULE, f"--config={config}", *overrides]
    if workdir:
        argv.append(f"--workdir={workdir}")
    return argv


def shell_join(argv: Sequence[str]) -> str:
    return shlex.join(list(argv))


def job_name(config: str) -> str:
    """A name usable by SLURM, TPU VMs and Kubernetes: lowercase letters, digits and dashes."""
    base = config.rsplit("/", 1)[-1].removesuffix(".py")
    cleaned = "".join(c if c.isalnum() else "-" for c in base.lower()).strip("-")
    return f"octomed-{cleaned}"[:40].rstrip("-")
