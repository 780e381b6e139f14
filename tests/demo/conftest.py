"""Every demo test leaves the production registries as it found them (the demo's plugin may register into them)."""

import pytest

from data_pipeline.plugins import load_plugins
from data_pipeline.sources import SOURCES
from data_pipeline.teachers import TEACHER_KINDS


@pytest.fixture(autouse=True)
def restore_registries():
    sources, kinds = dict(SOURCES), dict(TEACHER_KINDS)
    yield
    SOURCES.clear()
    SOURCES.update(sources)
    TEACHER_KINDS.clear()
    TEACHER_KINDS.update(kinds)


@pytest.fixture
def demo_plugin():
    """The demo's plugin registered, as `config.plugins = ("octomed_demo",)` does at each stage."""
    load_plugins(["octomed_demo"])
