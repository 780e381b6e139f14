"""A tiny random transformers Qwen2.5-VL and our model loaded from the same weights (shared with tests/model)."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from gen_helpers import helpers  # noqa: E402


@pytest.fixture(scope="session")
def tiny_vocab_pair(tmp_path_factory):
    """(transformers model, our model, config, folder) for the `tiny_vocab` preset, same weights."""
    from octomed_jax.hf import load_hf
    from octomed_jax.models.config import get_preset

    cfg = get_preset("tiny_vocab")
    hf = helpers.hf_model(cfg)
    path = tmp_path_factory.mktemp("gen_tiny_vocab")
    hf.save_pretrained(path)
    return hf, load_hf(str(path)), cfg, str(path)
