"""Qwen3-VL through the data path: image preprocessing equal to transformers' processor configured by the
preprocessor_config.json our contract writes, and packed batches carrying the family's vision layout."""

from __future__ import annotations

import os
import sys
import warnings

import jax
import numpy as np
import PIL.Image
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import packed_data_util as u  # noqa: E402

from octomed_jax.contract import Preprocessing  # noqa: E402
from octomed_jax.data import ExampleDecoder, abstract_train_batch, pack_rows, to_local_batch  # noqa: E402
from octomed_jax.data.images import (  # noqa: E402
    OCTOMED_MAX_PIXELS,
    QWEN3_VL_MAX_PIXELS,
    QWEN3_VL_MIN_PIXELS,
    preprocess_image,
)
from octomed_jax.data.packing import empty_batch  # noqa: E402
from octomed_jax.models import qwen3_vl  # noqa: E402
from octomed_jax.models.config import get_preset  # noqa: E402

transformers = pytest.importorskip("transformers")
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402

CFG = get_preset("qwen3_vl_tiny")


@pytest.mark.parametrize("height,width,max_pixels", [(300, 451, OCTOMED_MAX_PIXELS), (45, 77, QWEN3_VL_MAX_PIXELS),
                                                     (1000, 40, OCTOMED_MAX_PIXELS)])
def test_preprocessing_equals_transformers(height, width, max_pixels):
    """Patches (16 pixels, mean = std = 0.5) and grids equal transformers' processor built from the exported
    preprocessor_config.json: one config reproduces our preprocessing at serving time."""
    pre = Preprocessing(min_pixels=QWEN3_VL_MIN_PIXELS, max_pixels=max_pixels)
    config = pre.processor_config(CFG)
    assert (config["patch_size"], config["image_mean"], config["processor_class"]) == (16, [0.5] * 3,
                                                                                      "Qwen3VLProcessor")
    rng = np.random.default_rng(height * 7 + width)
    image = PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = Qwen2VLImageProcessorPil.from_dict(config)(images=[image], return_tensors="np")
    patches, grid = preprocess_image(image, **pre.image_options(CFG))
    np.testing.assert_array_equal(grid, hf["image_grid_thw"][0])
    assert patches.shape == hf["pixel_values"].shape == (int(np.prod(grid)), 3 * 2 * 16 * 16)
    np.testing.assert_allclose(patches, hf["pixel_values"], atol=1e-5, rtol=0)
    assert patches.min() >= -1 and patches.max() <= 1  # mean = std = 0.5: [0, 1] -> [-1, 1]


def test_packed_batch_carries_the_qwen3_vl_layout():
    """Examples decoded for Qwen3-VL (16-pixel patches) pack into the family's vision fields, equal to
    `qwen3_vl.VisionInputs.stack_rows` of the row's images; the batch assembles into its VisionInputs, and the
    padding batch and the abstract batch have the same fields, shapes and dtypes."""
    cfg = u.data_config("/unused", seq_len=320, max_patches=192)
    decoder = ExampleDecoder("src", cfg, CFG)
    traces = [u.make_trace("src", i, reasoning_words=6, images=n) for i, n in enumerate([1, 2])]
    examples = [decoder(i, t.to_bytes()) for i, t in enumerate(traces)]
    grids = np.concatenate([e.image_grid_thw for e in examples])
    assert examples[0].pixel_values.shape[1] == CFG.vision.patch_dim == 1536
    # 56 x 84 pixels at min_pixels 3136 -> a 64 x 96 image: 4 x 6 patches of 16.
    np.testing.assert_array_equal(examples[0].image_grid_thw, [[1, 4, 6]])
    batch = pack_rows([examples, examples[:1]], 320, 192, CFG.vision)
    want = qwen3_vl.VisionInputs.stack_rows(
        [(np.concatenate([e.pixel_values for e in examples]), grids), (examples[0].pixel_values, grids[:1])],
        CFG, pad_to=192)
    vision = to_local_batch(batch).inputs.vision
    assert type(vision) is qwen3_vl.VisionInputs
    for name in ("pixel_values", "rotary_positions", "image_segment_ids", "pos_index", "pos_weight"):
        np.testing.assert_array_equal(np.asarray(getattr(vision, name)), np.asarray(getattr(want, name)), name)
    empty = empty_batch(2, 320, 192, CFG.vision)
    abstract = abstract_train_batch(2, 320, 192, CFG.vision)
    assert sorted(empty) == sorted(batch)
    for got, ref in zip(jax.tree.leaves(to_local_batch(empty)), jax.tree.leaves(abstract), strict=True):
        assert (got.shape, got.dtype) == (ref.shape, ref.dtype)
