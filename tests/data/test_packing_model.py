"""A packed row through the student gives, for every example in it, the logits of that example alone."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import packed_data_util as u  # noqa: E402

from octomed_jax.data import Example, ExampleDecoder, pack_rows, to_local_batch  # noqa: E402
from octomed_jax.models.qwen2_5_vl import init_model  # noqa: E402

SEQ_LEN = 320
MAX_PATCHES = 256


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    cfg = u.data_config("/unused", seq_len=SEQ_LEN, max_patches=MAX_PATCHES)
    decoder = ExampleDecoder("src", cfg, u.MODEL_CFG)
    traces = [
        u.make_trace("src", 0, reasoning_words=12, images=1),  # 1 image
        u.make_trace("src", 1, reasoning_words=20),  # text only
        u.make_trace("src", 2, reasoning_words=8, images=2),  # 2 images
    ]
    out = [decoder(i, t.to_bytes()) for i, t in enumerate(traces)]
    assert all(isinstance(e, Example) for e in out), out
    assert sum(len(e) for e in out) <= SEQ_LEN - 10  # the row ends with padding
    assert [e.image_grid_thw.shape[0] for e in out] == [1, 0, 2]
    return out


@pytest.fixture(scope="module")
def model():
    return init_model(u.MODEL_CFG, seed=3)


@pytest.fixture(scope="module")
def packed(examples, model):
    """(the row's arrays, its logits)."""
    batch = pack_rows([examples], SEQ_LEN, MAX_PATCHES, u.MODEL_CFG.vision)
    return batch, np.asarray(model.forward(to_local_batch(batch).inputs))[0]


def test_packed_row_logits_equal_each_example_alone(examples, model, packed):
    batch, packed = packed
    start = 0
    for k, ex in enumerate(examples, start=1):
        end = start + len(ex)
        assert (batch["segment_ids"][0, start:end] == k).all()
        # The reference path: transformers-style call on the example alone (its own rope_index, one vision row).
        pixels = ex.pixel_values if ex.num_patches else None
        grids = ex.image_grid_thw if ex.num_patches else None
        alone = np.asarray(model(ex.input_ids[None], pixels, grids))[0]
        np.testing.assert_allclose(packed[start:end], alone, rtol=1e-5, atol=1e-5, err_msg=f"example {k}")
        start = end
    assert (batch["segment_ids"][0, start:] == 0).all()


def test_images_reach_the_logits(examples, model, packed):
    """The check above would be vacuous if image features did not matter: perturbing one image's pixels
    changes that example's logits, and only that example's."""
    batch, base = packed
    changed = dict(batch)
    n0 = examples[0].num_patches
    changed["pixel_values"] = batch["pixel_values"].copy()
    changed["pixel_values"][0, :n0] += 1.0  # the first example's image only
    out = np.asarray(model.forward(to_local_batch(changed).inputs))[0]
    len0 = len(examples[0])
    image_tokens = np.flatnonzero(examples[0].input_ids == u.MODEL_CFG.image_token_id)
    assert np.abs(out[image_tokens[-1] + 1 : len0] - base[image_tokens[-1] + 1 : len0]).max() > 1e-3
    np.testing.assert_array_equal(out[: image_tokens[0]], base[: image_tokens[0]])  # before the image: causal
    np.testing.assert_allclose(out[len0:], base[len0:], rtol=1e-6, atol=1e-6)  # other examples untouched
