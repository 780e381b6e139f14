"""tests/model/conftest.py's helpers (tiny transformers model, image prompts), imported by path under a unique
name: every test folder has a `conftest` module, so `from conftest import` would pick whichever came first."""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "model_test_helpers", os.path.join(os.path.dirname(__file__), "..", "model", "conftest.py")
)
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
