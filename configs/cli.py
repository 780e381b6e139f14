"""The config command line every stage shares: `--config=NAME [--config.x.y=v ...]`.

    python -m data_pipeline.build --config=traces_4 --config.recipe.traces_per_question=2
    python -m octomed_jax.train --config=traces_4 --config.train.num_steps=2000
    python -m octomed_demo --config.recipe.traces_per_question=1

`--config=NAME` names `configs/NAME.py` (or give a path to a .py file; ml_collections' `:argument`
suffix is kept), and `--config.some.field=value` overrides any field of the loaded ConfigDict, typed
as the field is. So one recipe name, with the same overrides, means the same recipe at both stages.

No flag is defined when this module (or a CLI using it) is imported: each CLI defines its flags on a
`FlagValues` when it runs, through `run_absl_cli` (under `absl.app`, for the JAX programs that log with
absl) or `parse_cli` (a fresh `FlagValues`, so the CLI can be called in-process, as the tests do).
Imports no JAX.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

CONFIGS_DIR = os.path.dirname(os.path.abspath(__file__))
CONFIG_HELP = "Config name in configs/ (e.g. full_mix) or a path to a .py file; --config.x.y=v overrides a field."


class ConfigNameError(ValueError):
    """`--config=NAME` names no file in `configs/`; the message lists the known names."""


def known_configs() -> list[str]:
    """The names `--config=NAME` accepts: the modules of `configs/` that define `get_config`."""
    names = []
    for file in sorted(os.listdir(CONFIGS_DIR)):
        if file.endswith(".py") and not file.startswith("_"):
            with open(os.path.join(CONFIGS_DIR, file)) as f:
                if "\ndef get_config(" in f.read():
                    names.append(file[:-3])
    return names


def _config_path(value: str) -> str:
    """`NAME[:arg]` -> `<configs dir>/NAME.py[:arg]`; a path to a .py file is returned as given."""
    name, colon, rest = value.partition(":")
    if name.endswith(".py"):
        return value
    if name not in known_configs():
        raise ConfigNameError(f"unknown config {name!r} (no configs/{name}.py); known: {', '.join(known_configs())}")
    return os.path.join(CONFIGS_DIR, f"{name}.py") + colon + rest


def resolve_config_argument(argv: Sequence[str], *, default: str | None = None) -> list[str]:
    """Rewrites `--config=NAME` (or `--config NAME`) in a command line to the path of `configs/NAME.py`.

    Args:
      argv: the command line, program first.
      default: a config name to use when `argv` gives none (inserted after the program).

    Returns:
      The command line with the config as a path, ready for `define_config_flag`.

    Raises:
      ConfigNameError: the name is not a config in `configs/`.
    """
    out = list(argv)
    if default is not None and not any(a == "--config" or a.startswith("--config=") for a in out[1:]):
        out.insert(1, f"--config={default}")
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + _config_path(arg.split("=", 1)[1])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = _config_path(out[i + 1])
    return out


def define_config_flag(flag_values: flags.FlagValues, argv: Sequence[str]) -> flags.FlagHolder:
    """Defines `--config` on `flag_values`, with the `--config.x.y=v` overrides that `argv` holds."""
    return config_flags.DEFINE_config_file("config", None, CONFIG_HELP, flag_values=flag_values, sys_argv=list(argv))


def _parse(flag_values: flags.FlagValues, argv: Sequence[str], program: str) -> list[str]:
    """`flag_values(argv)`, exiting with a message (not a traceback) on a bad flag or config field."""
    try:
        return flag_values(list(argv))
    except flags.Error as e:
        sys.exit(f"{program}: {e}")
    except (AttributeError, KeyError) as e:  # ml_collections' error for an override of a field that is not there
        detail: object = e
        while isinstance(detail, BaseException) and detail.args:  # AttributeError(KeyError("'x'\nDid you mean"))
            detail = detail.args[0]
        reason = str(detail).replace("\n", "; ")
        overrides = ", ".join(a.split("=", 1)[0] for a in argv if a.startswith("--config.")) or "none"
        sys.exit(f"{program}: a --config override (or the config file) names a field that does not exist: "
                 f"{reason} (overrides given: {overrides})")


def _require(holder: flags.FlagHolder, program: str) -> ml_collections.ConfigDict:
    if holder.value is None:
        sys.exit(f"{program}: give --config=NAME; known: {', '.join(known_configs())}")
    return holder.value


def _resolve_or_exit(argv: Sequence[str], program: str, default: str | None) -> list[str]:
    try:
        return resolve_config_argument(argv, default=default)
    except ConfigNameError as e:
        sys.exit(f"{program}: {e}")


def parse_cli(
    argv: Sequence[str],
    *,
    program: str,
    doc: str,
    define_flags: Callable[[flags.FlagValues], None],
    default_config: str | None = None,
    config_optional: bool = False,
) -> tuple[ml_collections.ConfigDict | None, flags.FlagValues]:
    """Parses a command line into its config (overrides applied) and a fresh `FlagValues` of the other flags.

    Args:
      argv: the command line, program first.
      program: the name errors start with.
      doc: printed with the flags for `--help`.
      define_flags: defines the CLI's other flags on the `FlagValues` it is given.
      default_config: the config name when `argv` gives none (None: `--config` is required, unless...)
      config_optional: ... the program can do without one (the config is then None).

    Returns:
      (config, flag values).

    Exits (SystemExit) with a message naming the problem: an unknown config name, a bad flag or override.
    """
    argv = _resolve_or_exit(argv, program, default_config)
    flag_values = flags.FlagValues()
    holder = define_config_flag(flag_values, argv)
    define_flags(flag_values)
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(f"{doc}\n{flag_values.get_help()}")
        sys.exit(0)
    _parse(flag_values, argv, program)
    if config_optional and holder.value is None:
        return None, flag_values
    return _require(holder, program), flag_values


def run_absl_cli(
    main: Callable[[ml_collections.ConfigDict, flags.FlagValues], None],
    *,
    program: str,
    define_flags: Callable[[flags.FlagValues], None],
    default_config: str | None = None,
    argv: Sequence[str] | None = None,
) -> None:
    """Runs `main(config, flags.FLAGS)` under `absl.app` (absl logging, `--help`) with `--config` defined.

    Call it from `if __name__ == "__main__":` only: it defines flags on the global `flags.FLAGS`.

    Args:
      main: the program, given the loaded config (overrides applied) and the parsed flags.
      program: the name errors start with.
      define_flags: defines the program's other flags on the `FlagValues` it is given.
      default_config: the config name when the command line gives none (None: `--config` is required).
      argv: the command line (default `sys.argv`).
    """
    from absl import app

    argv = _resolve_or_exit(sys.argv if argv is None else argv, program, default_config)
    holder = define_config_flag(flags.FLAGS, argv)
    define_flags(flags.FLAGS)

    def run(positional: list[str]) -> None:
        del positional  # every argument is a flag
        main(_require(holder, program), flags.FLAGS)

    app.run(run, argv=argv, flags_parser=lambda args: _parse(flags.FLAGS, args, program))
