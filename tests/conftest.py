"""Test setup: 8 fake CPU devices, set before JAX starts, so mesh tests run on any machine; `child_env` for tests
that start Python subprocesses; the longest modules first."""

import collections
import os
from collections.abc import Callable

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def child_env(tmp_path_factory) -> Callable[..., dict[str, str]]:
    """`child_env(**overrides)`: this process's environment for a subprocess, plus a JAX persistent compilation cache
    shared by every child of this test session (one per xdist worker).

    Children that run the same program (a trainer restarted after a signal, the demo rerun) then load the step
    functions the first one compiled instead of compiling them again (CI time). Every compile is cached, however
    short (CPU compiles are seconds). The cache key covers the computation, devices and XLA_FLAGS, so children on
    other device counts compile their own.
    """
    cache = str(tmp_path_factory.mktemp("jax_compilation_cache"))

    def make(**overrides: str) -> dict[str, str]:
        return {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1", **overrides}

    return make


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules marked `slow(seconds=N)` run first, the longest first; the rest keep their order.

    Under `-n 2 --dist=loadscope --no-loadscope-reorder` xdist hands modules to workers in this order, so the long
    end-to-end modules start at once on both workers instead of one starting last and running alone (CI time).
    """
    seconds: dict[object, float] = collections.defaultdict(float)
    for item in items:
        mark = item.get_closest_marker("slow")
        seconds[item.path] = max(seconds[item.path], mark.kwargs.get("seconds", 0) if mark else 0)
    items.sort(key=lambda item: -seconds[item.path])
