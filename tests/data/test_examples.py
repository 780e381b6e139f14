"""Records -> examples: shifted targets and mask, bad records and images skipped and counted (with an
error budget), overlong examples dropped or truncated in the reasoning only."""

from __future__ import annotations

import os
import sys

import msgpack
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import packed_data_util as u  # noqa: E402

from data_pipeline.records import ImageRef  # noqa: E402
from octomed_jax.data import (  # noqa: E402
    IM_END_ID,
    THINK_END_ID,
    THINK_START_ID,
    DataErrorBudgetExceeded,
    ErrorBudget,
    Example,
    ExampleDecoder,
    Skipped,
    encode_chat,
    load_tokenizer,
    make_iterator,
    messages_for_trace,
)
from octomed_jax.models.positions import rope_index  # noqa: E402

ANSWER = "The answer is \\boxed{A} (Pneumonia)."


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def decoder(**overrides) -> ExampleDecoder:
    return ExampleDecoder("src", u.data_config("/unused", **overrides), u.MODEL_CFG)


def test_targets_are_the_next_token_and_the_loss_covers_the_answer(tokenizer):
    trace = u.make_trace("src", 0, reasoning_words=30, images=1)
    ex = decoder()(5, trace.to_bytes())
    assert isinstance(ex, Example) and (ex.source, ex.index) == ("src", 5)
    chat = encode_chat(tokenizer, messages_for_trace(trace, system_prompt="S."), image_grids=list(ex.image_grid_thw))
    np.testing.assert_array_equal(ex.input_ids, chat.token_ids)
    np.testing.assert_array_equal(ex.targets[:-1], chat.token_ids[1:])
    np.testing.assert_array_equal(ex.loss_mask[:-1], chat.loss_mask[1:])
    assert not ex.loss_mask[-1]
    # The trained-on targets spell exactly the response and its <|im_end|>.
    trained = ex.targets[ex.loss_mask]
    assert trained[-1] == IM_END_ID
    assert tokenizer.decode(trained[:-1]) == trace.response
    positions, _ = rope_index(chat.token_ids[None], ex.image_grid_thw, None, u.MODEL_CFG)
    np.testing.assert_array_equal(ex.positions, positions[:, 0])
    assert ex.pixel_values.shape == (int(np.prod(ex.image_grid_thw, axis=-1).sum()), 1176)


def test_overlong_dropped_by_default_and_truncated_in_the_reasoning_only(tokenizer):
    trace = u.make_trace("src", 1, reasoning_words=200)
    full = decoder(seq_len=4096)(0, trace.to_bytes())
    seq_len = len(full) - 100
    dropped = decoder(seq_len=seq_len)(0, trace.to_bytes())
    assert isinstance(dropped, Skipped) and dropped.reason == "overlong" and not dropped.is_error

    cut = decoder(seq_len=seq_len, overlong="truncate_reasoning")(0, trace.to_bytes())
    assert isinstance(cut, Example) and len(cut) == seq_len and cut.truncated == 100
    end = int(np.flatnonzero(full.input_ids == THINK_END_ID)[0])
    tail = len(full) - end  # </think>, the answer line, <|im_end|>, "\n": all kept
    np.testing.assert_array_equal(cut.input_ids[-tail:], full.input_ids[-tail:])
    start = int(np.flatnonzero(full.input_ids == THINK_START_ID)[0])
    np.testing.assert_array_equal(cut.input_ids[: start + 1], full.input_ids[: start + 1])  # prompt kept
    np.testing.assert_array_equal(cut.input_ids[start + 1 : end - 100], full.input_ids[start + 1 : end - 100])
    text = tokenizer.decode(cut.targets[cut.loss_mask])
    assert text.endswith("</think>\n\n" + ANSWER + "<|im_end|>")
    np.testing.assert_array_equal(cut.targets[:-1], cut.input_ids[1:])
    np.testing.assert_array_equal(cut.positions, np.broadcast_to(np.arange(seq_len), (3, seq_len)))

    # Not enough reasoning to cut: dropped, never cut through the answer.
    without_reasoning = len(full) - (end - start - 1)
    bare = decoder(seq_len=without_reasoning, overlong="truncate_reasoning")(0, trace.to_bytes())
    assert isinstance(bare, Example) and THINK_START_ID in bare.input_ids  # all reasoning cut: still fits
    short = decoder(seq_len=without_reasoning - 1, overlong="truncate_reasoning")(0, trace.to_bytes())
    assert isinstance(short, Skipped) and short.reason == "overlong"


def test_too_many_patches_dropped():
    trace = u.make_trace("src", 2, reasoning_words=5, images=2)
    out = decoder(max_patches=32)(0, trace.to_bytes())
    assert isinstance(out, Skipped) and out.reason == "too_many_patches"


def bad_source(tmp_path) -> str:
    """Source 'bad' of 12 records: record 3 corrupt bytes, 6 valid msgpack but no trace, 8 a corrupt image."""
    records = [u.make_trace("bad", i, reasoning_words=10, images=i % 2).to_bytes() for i in range(12)]
    records[3] = b"\xc1\xc1 not msgpack"
    records[6] = msgpack.packb([1, 2, 3])
    t = u.make_trace("bad", 8, reasoning_words=10, images=1)
    broken = ImageRef(data=u.png(1, 64, 64)[:60], format="png")
    t = type(t)(**{**t.__dict__, "question": type(t.question)(**{**t.question.__dict__, "images": (broken,)})})
    records[8] = t.to_bytes()
    u.write_records(str(tmp_path), "bad", records)
    return str(tmp_path)


def test_corrupt_records_and_images_skipped_and_counted(tmp_path):
    data_dir = bad_source(tmp_path)
    cfg = u.data_config(data_dir, sources={"bad": 1.0}, epochs=1, batch_size=1, error_budget=ErrorBudget(max_errors=3))
    it = make_iterator(cfg, u.MODEL_CFG, process_index=0, process_count=1)
    batches = list(it)
    counts = it.counts()
    assert counts["records"] == 12
    assert counts["errors"] == {"corrupt_image": 1, "corrupt_record": 1, "schema_version": 1}
    assert sorted(map(tuple, counts["recent_skips"])) == [
        ("bad", 3, "corrupt_record"),
        ("bad", 6, "schema_version"),
        ("bad", 8, "corrupt_image"),
    ]
    assert counts["packing"]["examples"] == 9
    assert sum(int(b["segment_ids"].max()) for b in batches) <= 9


def test_error_budget_exceeded_stops_with_source_and_index(tmp_path):
    data_dir = bad_source(tmp_path)
    cfg = u.data_config(data_dir, sources={"bad": 1.0}, epochs=1, batch_size=1, error_budget=ErrorBudget(max_errors=2))
    it = make_iterator(cfg, u.MODEL_CFG, process_index=0, process_count=1)
    with pytest.raises(DataErrorBudgetExceeded, match=r"3 bad records .* source 'bad' at record index \d+") as e:
        list(it)
    assert "corrupt_record" in str(e.value) and "bad[" in str(e.value)

    by_fraction = cfg.replace(error_budget=ErrorBudget(max_errors=None, max_fraction=0.2, min_records=4))
    it = make_iterator(by_fraction, u.MODEL_CFG, process_index=0, process_count=1)
    with pytest.raises(DataErrorBudgetExceeded, match="max_fraction=0.2"):
        list(it)


def test_image_without_bytes_needs_an_image_root(tmp_path):
    t = u.make_trace("src", 3, reasoning_words=5)
    q = type(t.question)(**{**t.question.__dict__, "images": (ImageRef(path="img/x.png"),)})
    t = type(t)(**{**t.__dict__, "question": q})
    out = decoder()(0, t.to_bytes())
    assert isinstance(out, Skipped) and out.reason == "missing_image"
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "x.png").write_bytes(u.png(0, 56, 56))
    ok = decoder(image_root=str(tmp_path))(0, t.to_bytes())
    assert isinstance(ok, Example) and ok.image_grid_thw.tolist() == [[1, 4, 4]]


def test_pipeline_counts_overlong_drops_and_truncations(tmp_path):
    u.mixed_dataset(str(tmp_path), n_text=12, n_image=8)
    cfg = u.data_config(str(tmp_path), seq_len=160, epochs=1, batch_size=1)
    it = make_iterator(cfg, u.MODEL_CFG, process_index=0, process_count=1)
    batches = list(it)
    dropped = it.counts()["dropped"].get("overlong", 0)
    assert 0 < dropped < 20 and it.counts()["packing"]["examples"] == 20 - dropped
    assert all(b["input_ids"].shape == (1, 160) for b in batches)

    it = make_iterator(cfg.replace(overlong="truncate_reasoning"), u.MODEL_CFG, process_index=0, process_count=1)
    list(it)
    counts = it.counts()
    assert counts["dropped"] == {} and counts["packing"]["truncated_examples"] == dropped
