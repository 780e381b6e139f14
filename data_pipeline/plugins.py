"""Plugins: modules that add source adapters or teacher kinds, named by the config that uses them.

The production registries hold the public formats (`data_pipeline.sources.SOURCES`) and the
OpenAI-compatible teacher (`data_pipeline.teachers.TEACHER_KINDS`). Anything else, such as the demo's
synthetic world and teacher, lives in its own package with a `register()` function that calls
`sources.register_source` and `teachers.register_teacher_kind`, and a config that needs it lists it:

    config.plugins = ("octomed_demo",)          # configs/demo.py; on the command line: --config.plugins=octomed_demo

`python -m data_pipeline.build` (through `run_build`) and `python -m octomed_jax.train` call
`load_plugins(config.plugins)` before they read anything else of the config. Imports no JAX.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

PLUGINS_FIELD = "config.plugins"
PLUGIN_HINT = (
    f"an adapter or teacher kind that a plugin registers needs the plugin's module in {PLUGINS_FIELD} "
    "(configs/demo.py lists 'octomed_demo')"
)


class PluginError(ValueError):
    """A module named in `config.plugins` cannot be imported or has no `register()`."""


def load_plugins(names: Iterable[str]) -> None:
    """Imports each named module and calls its `register()`.

    Registering is idempotent (the registries accept the same entry again), so this may run once per
    entry point, or again in the same process.

    Args:
      names: importable module names, e.g. `config.plugins`.

    Raises:
      PluginError: `names` is a string, or a module is missing or has no callable `register`.
    """
    if isinstance(names, str):
        raise PluginError(f"{PLUGINS_FIELD} must be a list of module names, not the string {names!r}")
    for name in names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not (name == e.name or name.startswith(f"{e.name}.")):
                raise  # the plugin exists but one of its own imports is missing
            raise PluginError(f"{PLUGINS_FIELD}: no module named {name!r}; fix the name or install it") from e
        register = getattr(module, "register", None)
        if not callable(register):
            raise PluginError(f"{PLUGINS_FIELD}: module {name!r} has no register() function")
        register()
