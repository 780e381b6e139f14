"""The demo's compact tokenizer, and special ids read from the tokenizer through the whole data path."""

import os
import types

import numpy as np
import pytest

from configs import demo as demo_config
from data_pipeline.records import AcceptedTrace
from data_pipeline.teachers import TeacherConfig
from octomed_demo import vocabulary, world
from octomed_jax.contract import ContractError, RunContract
from octomed_jax.data import tokenizer as tok_lib
from octomed_jax.data.config import DataConfig
from octomed_jax.data.examples import ExampleDecoder, special_ids_for, truncate_reasoning
from octomed_jax.data.packing import pack_rows
from octomed_jax.data.template import encode_chat, messages_for_question
from octomed_jax.models.config import get_preset, to_hf_dict


@pytest.fixture(scope="module")
def demo_tok():
    return tok_lib.load_tokenizer(vocabulary.TOKENIZER_DIR, special_ids=None)


@pytest.fixture(scope="module")
def demo_ids(demo_tok):
    return tok_lib.SpecialIds.from_tokenizer(demo_tok)


def test_committed_files_are_what_the_builder_writes(tmp_path):
    vocabulary.build_tokenizer(str(tmp_path))
    committed = sorted(os.listdir(vocabulary.TOKENIZER_DIR))
    assert sorted(os.listdir(tmp_path)) == committed
    for name in committed:
        with open(tmp_path / name, "rb") as a, open(os.path.join(vocabulary.TOKENIZER_DIR, name), "rb") as b:
            assert a.read() == b.read(), f"{name}: rerun `python -m octomed_demo.vocabulary` and commit the files"


def test_special_ids_are_read_from_the_tokenizer(demo_tok, demo_ids):
    n = len(demo_tok)
    assert n <= vocabulary.VOCAB_SIZE == get_preset("demo").text.vocab_size
    # Qwen's added tokens, in Qwen's order, after the learned vocabulary.
    assert demo_ids.endoftext == n - 16 and demo_ids.think_end == n - 1
    assert demo_ids.image_pad == demo_ids.endoftext + 12 and demo_ids.think_start == n - 2
    assert demo_tok.convert_tokens_to_ids("<|im_end|>") == demo_ids.im_end
    assert demo_tok.encode("<think>", add_special_tokens=False) == [demo_ids.think_start]
    # Checked against a run's ids: Qwen's by default (the demo's differ), its own when given.
    wrong = rf"<\|endoftext\|> -> {demo_ids.endoftext} \(expected 151643\)"
    with pytest.raises(tok_lib.TokenizerError, match=wrong):
        tok_lib.load_tokenizer(vocabulary.TOKENIZER_DIR)
    tok_lib.load_tokenizer(vocabulary.TOKENIZER_DIR, special_ids=demo_ids)
    vocab = {t: i for t, i in tok_lib.SPECIAL_TOKENS.items() if t != "<|image_pad|>"}
    with pytest.raises(tok_lib.TokenizerError, match="no single token for <\\|image_pad\\|>"):
        tok_lib.SpecialIds.from_tokenizer(types.SimpleNamespace(get_vocab=lambda: vocab, name_or_path="fake"))


def test_world_text_round_trips_and_is_no_longer_than_with_qwen(demo_tok, demo_ids):
    qwen = tok_lib.load_tokenizer()
    teacher = world.DemoTeacher(TeacherConfig.from_mapping(world.teacher_settings(seed=1)))
    for category in world.option_counts():
        q = world.make_question(7, category, "test", 5)  # another seed than the vocabulary's corpus
        messages = [*messages_for_question(q), {"role": "assistant", "content": teacher.respond(q, 3)}]
        grids = [(1, 4, 4)] * len(q.images)
        ours, theirs = encode_chat(demo_tok, messages, image_grids=grids), encode_chat(qwen, messages,
                                                                                        image_grids=grids)
        assert len(ours) <= len(theirs)
        assert int(ours.image_token_mask.sum()) == 4 * len(q.images)
        assert ours.image_token_id == demo_ids.image_pad
        assert demo_tok.decode(ours.token_ids) == qwen.decode(theirs.token_ids)  # the same text
    text = "Übermäßig 12345 héllo wörld 😀 <not a token>"  # off the world: byte-level fallback
    assert demo_tok.decode(demo_tok.encode(text, add_special_tokens=False)) == text


def test_contract_model_and_data_follow_the_tokenizer(tmp_path, demo_ids):
    config = demo_config.get_config()
    contract = RunContract.from_config(config, data_dir=str(tmp_path), sources={"demo_text": 1.0}, rows_per_host=1)
    assert contract.special_ids == demo_ids and contract.data.tokenizer_path == vocabulary.TOKENIZER_DIR
    m = contract.model
    assert (m.image_token_id, m.video_token_id) == (demo_ids.image_pad, demo_ids.video_pad)
    assert (m.vision_start_token_id, m.vision_end_token_id) == (demo_ids.vision_start, demo_ids.vision_end)
    hf = to_hf_dict(m, special_ids=contract.special_ids)
    text = hf.get("text_config", hf)
    assert (text["bos_token_id"], text["eos_token_id"]) == (demo_ids.endoftext, demo_ids.im_end)
    # Qwen's tokenizer on the demo's 1,024-row model: a clear error, not a silent out-of-range embedding.
    config.data.tokenizer_path = ""
    with pytest.raises(ContractError, match="do not fit the model's vocabulary"):
        RunContract.from_config(config)


def test_decoded_examples_and_padding_use_the_tokenizers_ids(demo_ids):
    cfg = DataConfig(data_dir="unused", sources={"s": 1.0}, seq_len=192, max_patches=64,
                     tokenizer_path=vocabulary.TOKENIZER_DIR)
    assert special_ids_for(cfg.tokenizer_path) == demo_ids
    model_cfg = RunContract.from_config(demo_config.get_config()).model
    teacher = world.DemoTeacher(TeacherConfig.from_mapping(world.teacher_settings(seed=0)))
    q = world.make_question(0, "mm_reasoning", "train", 2)
    trace = AcceptedTrace(question=q, response=teacher.respond(q, 0), format="cot", teacher="demo", sample_index=0)
    example = ExampleDecoder("s", cfg, model_cfg).decode(0, trace.to_bytes())
    assert example.input_ids.max() < 1024 and example.targets[-1] == demo_ids.endoftext
    assert int((example.input_ids == demo_ids.image_pad).sum()) == 4
    batch = pack_rows([[example], []], 192, 64, model_cfg.vision, pad_id=demo_ids.pad)
    n = len(example)
    assert (batch["input_ids"][0, n:] == demo_ids.endoftext).all() and (batch["input_ids"][1] == demo_ids.pad).all()
    assert (batch["input_ids"][0, :n] == example.input_ids).all()
    # Overlong traces are cut inside <think> by the tokenizer's own pair.
    ids = example.input_ids
    mask = np.zeros(len(ids), bool)
    start = int(np.flatnonzero(ids == demo_ids.think_start)[0])
    mask[start:] = True
    cut = truncate_reasoning(ids, mask, len(ids) - 2, demo_ids)
    assert cut is not None and cut[2] == 2 and (cut[0] == demo_ids.think_end).sum() == 1
    assert truncate_reasoning(ids, mask, len(ids) - 2) is None  # Qwen's ids: no <think> found
