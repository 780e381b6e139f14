"""Qwen3-VL through the data path: image preprocessing equal to transformers' processor configured by the
preprocessor_config.json our contract writes, and packed batches carrying the family's vision layout."""

from __future__ import annotations

import io
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


class _Processor(transformers.Qwen3VLProcessor):
    """Qwen3VLProcessor without a video processor (transformers' needs torchvision, not installed here)."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument is not None:
            return super().check_argument_for_proper_class(argument_name, argument)


@pytest.mark.parametrize("system_prompt", [None, "You are a radiologist."])
def test_ids_and_pixels_equal_the_qwen3_vl_processor(system_prompt, tmp_path):
    """A training example decoded for Qwen3-VL equals Qwen3VLProcessor on the text that Qwen3-VL-Instruct's own
    chat template renders (no default system turn: a run without a system prompt shows none), with the processor
    built from the tokenizer and chat template we export and the preprocessor_config.json the contract writes."""
    from octomed_jax.data import load_tokenizer, save_tokenizer, template

    cfg = u.data_config("/unused", seq_len=400, max_patches=192, system_prompt=system_prompt)
    traces = [u.make_trace("src", i, reasoning_words=6, images=n) for i, n in enumerate([2, 1])]
    decoder = ExampleDecoder("src", cfg, CFG)
    save_tokenizer(load_tokenizer(), tmp_path, template="qwen3_vl")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert hf_tokenizer.chat_template == template.QWEN3_VL_CHAT_TEMPLATE
    config = Preprocessing().processor_config(CFG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processor = _Processor(image_processor=Qwen2VLImageProcessorPil.from_dict(config), tokenizer=hf_tokenizer)
    for i, trace in enumerate(traces):
        example = decoder(i, trace.to_bytes())
        messages = template.messages_for_trace(trace, system_prompt=system_prompt, instruction=cfg.instruction)
        text = hf_tokenizer.apply_chat_template(messages, tokenize=False)  # the saved template
        assert text.startswith("<|im_start|>user\n" if system_prompt is None
                               else f"<|im_start|>system\n{system_prompt}<|im_end|>\n<|im_start|>user\n")
        images = [PIL.Image.open(io.BytesIO(ref.data)) for ref in trace.question.images]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf = processor(images=images, text=[text], return_tensors="np")
        np.testing.assert_array_equal(example.input_ids, hf["input_ids"][0])
        np.testing.assert_array_equal(example.image_grid_thw, hf["image_grid_thw"])
        np.testing.assert_allclose(example.pixel_values, hf["pixel_values"], atol=1e-5, rtol=0)
        # The loss covers the targets from the answer's first token to its <|im_end|> (the last "\n" untrained).
        ids = example.input_ids
        header_end = np.flatnonzero(ids == 151644)[-1] + len(hf_tokenizer.encode("assistant\n"))  # <|im_start|>
        assert ids[-2] == 151645  # <|im_end|>
        np.testing.assert_array_equal(np.flatnonzero(example.loss_mask), np.arange(header_end, len(ids) - 2))
