"""InternVL through the data path: the contract's processor config and token ids equal transformers'
InternVLProcessor (built from our tokenizer and preprocessor_config.json, offline), and a packed row trains
as its examples do alone."""

from __future__ import annotations

import dataclasses
import io
import os
import sys
import warnings

import numpy as np
import PIL.Image
import pytest
from flax import nnx

sys.path.insert(0, os.path.dirname(__file__))

import packed_data_util as u  # noqa: E402

from configs import full_mix_internvl  # noqa: E402
from octomed_jax.contract import ContractError, RunContract  # noqa: E402
from octomed_jax.data import (  # noqa: E402
    Example,
    ExampleDecoder,
    pack_rows,
    template,  # noqa: E402
    to_local_batch,
)
from octomed_jax.data.tokenizer import INTERNVL_IMAGE_TOKENS, INTERNVL_SPECIAL_IDS, load_tokenizer  # noqa: E402
from octomed_jax.models.config import get_preset  # noqa: E402
from octomed_jax.models.families import init_model  # noqa: E402
from octomed_jax.training.step import LossConfig, micro_batch_loss  # noqa: E402

transformers = pytest.importorskip("transformers")
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil  # noqa: E402

CFG = get_preset("internvl_tiny")
TILE = CFG.vision.num_tile_patches  # 36 patches of an 84-pixel tile
SEQ_LEN, MAX_PATCHES = 320, 14 * TILE


@pytest.fixture(scope="module")
def contract():
    return RunContract.from_config(full_mix_internvl.get_config())


@pytest.fixture(scope="module")
def examples():
    decoder = ExampleDecoder("src", u.data_config("/unused", seq_len=SEQ_LEN, max_patches=MAX_PATCHES), CFG)
    traces = [u.make_trace("src", 0, reasoning_words=8, images=1), u.make_trace("src", 1, reasoning_words=10)]
    out = [decoder(i, t.to_bytes()) for i, t in enumerate(traces)]
    assert all(isinstance(e, Example) for e in out), out
    return traces, out


def test_contract_reads_the_internvl_student(contract):
    """The tokenizer's InternVL image tokens (added to Qwen's files at InternVL3.5's ids) are the contract's, the
    model's image token follows them, and the contract round-trips through JSON."""
    assert contract.family == contract.model.family == "internvl"
    assert contract.special_ids == INTERNVL_SPECIAL_IDS
    assert (contract.model.image_token_id, contract.preprocessing.max_tiles) == (151671, 12)
    assert contract.preprocessing.image_options(contract.model) == {
        "max_tiles": 12, "tile_size": 448, "patch_size": 14, "image_mean": (0.485, 0.456, 0.406),
        "image_std": (0.229, 0.224, 0.225)}
    assert contract.prompting.template == "internvl"
    assert RunContract.from_dict(contract.to_dict()) == contract
    # A contract written before templates were named per family said "qwen2_5_vl" for InternVL runs, prompted with
    # InternVL's template all the same: read as such. Qwen's template with InternVL's tokens is refused.
    old = contract.to_dict()
    old["prompting"]["template"] = "qwen2_5_vl"
    assert RunContract.from_dict(old) == contract
    with pytest.raises(ContractError, match="InternVL's template goes with InternVL's tokens only"):
        contract.replace(prompting=dataclasses.replace(contract.prompting, template="qwen3_vl"))
    tokenizer = load_tokenizer(None, special_ids=contract.special_ids)  # checks the ids; adds the tokens
    assert (tokenizer.start_image_token_id, tokenizer.context_image_token_id, tokenizer.end_image_token_id) == (
        151669, 151671, 151670)


def test_a_patch_budget_of_part_tiles_is_refused_by_name():
    config = full_mix_internvl.get_config()
    config.data.max_patches = 16 * 1024 + 4  # the 448-px tiles' 1,024 patches do not divide it
    with pytest.raises(ContractError, match=r"data.max_patches=16388: internvl packs whole image tiles of 1024 "
                                            r"patches; .*multiple of 1024 \(e.g. 16384\)"):
        RunContract.from_config(config)


class _Processor(transformers.InternVLProcessor):
    """InternVLProcessor without a video processor (transformers' needs torchvision, not installed here)."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument is not None:
            return super().check_argument_for_proper_class(argument_name, argument)


def test_ids_and_pixels_equal_transformers_processor(contract, examples, tmp_path):
    """An example's ids equal InternVLProcessor's on the chat `apply_chat_template` renders with InternVL's
    template (one `<IMG_CONTEXT>\\n` per image, expanded to `<img>` + 9 x tiles `<IMG_CONTEXT>` + `</img>`), its
    processor built from the tokenizer we save and the preprocessor_config.json the contract writes (here with
    internvl_tiny's 84-pixel tiles); pixels too."""
    traces, (example, _) = examples
    tokenizer = load_tokenizer(None, image_tokens=INTERNVL_IMAGE_TOKENS)
    tokenizer.save_pretrained(tmp_path)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    config = contract.preprocessing.processor_config(CFG)
    assert (config["size"], config["max_patches"], config["processor_class"]) == (
        {"height": 84, "width": 84}, 12, "InternVLProcessor")
    processor = _Processor(image_processor=GotOcr2ImageProcessorPil.from_dict(config),
                                               tokenizer=hf_tokenizer, image_seq_length=TILE // 4)
    cfg = u.data_config("/unused")
    messages = template.messages_for_trace(traces[0], system_prompt=cfg.system_prompt, instruction=cfg.instruction)
    text = hf_tokenizer.apply_chat_template(messages, chat_template=template.INTERNVL_CHAT_TEMPLATE, tokenize=False)
    assert text == template.render_chat(messages, template="internvl")
    assert text.startswith("<|im_start|>system\nS.<|im_end|>\n<|im_start|>user\n<IMG_CONTEXT>\nQuestion 0")
    # The exported template adds the run's system prompt to a conversation without one.
    exported = template.chat_template("S.", template="internvl")
    assert hf_tokenizer.apply_chat_template(messages[1:], chat_template=exported, tokenize=False) == text
    image = PIL.Image.open(io.BytesIO(traces[0].question.images[0].data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = processor(images=[image], text=[text], return_tensors="np")
    np.testing.assert_array_equal(example.input_ids, hf["input_ids"][0])
    assert int((example.input_ids == 151671).sum()) == 7 * 9  # a 56 x 84 image: 3 x 2 tiles + thumbnail
    assert example.image_grid_thw.tolist() == [[7, 6, 6]]
    np.testing.assert_allclose(example.pixel_values.reshape(hf["pixel_values"].shape), hf["pixel_values"],
                               atol=1e-5, rtol=0)
    np.testing.assert_array_equal(example.positions, np.broadcast_to(np.arange(len(example)), (3, len(example))))


def test_packed_row_trains_as_its_examples_alone(examples):
    """A packed InternVL row (1-D positions, tiles in the patch layout, no vision layout fields): each example's
    logits equal its own, and the row's loss is the loss-token-weighted mean of the examples' own losses."""
    _, exs = examples
    model = init_model(CFG, seed=3)
    batch = pack_rows([exs], SEQ_LEN, MAX_PATCHES, CFG.vision)
    assert sorted(batch) == ["input_ids", "loss_mask", "pixel_values", "positions", "segment_ids", "targets"]
    inputs = to_local_batch(batch)
    forward = nnx.jit(lambda m, x: m.forward(x))  # compiled once per shape: eager calls re-trace the layer scans
    logits = np.asarray(forward(model, inputs.inputs))[0]
    start, total, count = 0, 0.0, 0
    for ex in exs:
        vision = (ex.pixel_values, ex.image_grid_thw) if ex.num_patches else (None, None)
        alone = np.asarray(forward(model, model.prepare_inputs(ex.input_ids[None], *vision)))[0]
        np.testing.assert_allclose(logits[start:start + len(ex)], alone, rtol=1e-5, atol=1e-5)
        logp = alone - np.log(np.exp(alone - alone.max(-1, keepdims=True)).sum(-1, keepdims=True)) - alone.max(
            -1, keepdims=True)
        total -= float(logp[np.arange(len(ex)), ex.targets][ex.loss_mask].sum())
        count += int(ex.loss_mask.sum())
        start += len(ex)
    loss_fn = nnx.jit(lambda m, b: micro_batch_loss(m, b.inputs, b.targets, b.loss_mask, LossConfig()))
    loss, (tokens, dropped) = loss_fn(model, inputs)
    assert (int(tokens), int(dropped)) == (count, 0)
    assert np.isfinite(float(loss)) and float(loss) / count == pytest.approx(total / count, rel=1e-5)
