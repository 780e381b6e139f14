"""The demo as a plugin: the whole recipe in miniature on a laptop CPU, nothing to download.

    python -m octomed_demo [--config=demo] [--config.x.y=v] [--workdir=DIR]

- `world`: the synthetic world (questions, lesion images), its source adapter "demo_world" and its
  synthetic teacher (kind "demo"). Imports no JAX.
- `driver`: build if missing, evaluate, train, evaluate, HF export reloaded by transformers, report.
- `__main__`: the command above (default config `demo`, default workdir `runs/demo`).

None of this is in the production registries: `register()` adds the adapter and the teacher kind, and
`configs/demo.py` asks for it with `config.plugins = ("octomed_demo",)` (see `data_pipeline.plugins`).
"""

from __future__ import annotations


def register() -> None:
    """Adds the "demo_world" source adapter and the "demo" teacher kind to the registries (idempotent)."""
    from data_pipeline.sources import register_source
    from data_pipeline.teachers import register_teacher_kind
    from octomed_demo import world

    register_source(world.SOURCE_ADAPTER)
    register_teacher_kind(world.TEACHER_KIND, world.DemoTeacher)
