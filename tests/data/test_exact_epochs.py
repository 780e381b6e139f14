"""Exact epochs on a mixed text + image recipe over 2 data shards: every trace is seen exactly `epochs` x weight
times, and the counting pass (`octomed_jax.data.epochs`) predicts the steps and the epoch ends the real
iterator produces; its caches are reused and invalidated."""

from __future__ import annotations

import collections
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import packed_data_util as u  # noqa: E402

from data_pipeline.writer import MANIFEST, ManifestStats, ShardFile, build_manifest, write_json  # noqa: E402
from octomed_jax.data import ExampleDecoder, PackedBatchIterator, built_sources  # noqa: E402
from octomed_jax.data.epochs import CACHE_DIR, count_plan  # noqa: E402
from octomed_jax.data.pipeline import STATE_VERSION, StreamKeys, make_iterator, stream_keys  # noqa: E402
from octomed_jax.data.shards import ShardedIterator  # noqa: E402

N_TEXT, N_IMAGE = 12, 8
WEIGHTS = {"text_src": 1.0, "image_src": 2.0}
EPOCHS, SHARDS = 2, 2
EPOCH_LEN = N_TEXT * 1 + N_IMAGE * 2


def config(data_dir: str, **overrides):
    return u.data_config(data_dir, **{"sources": WEIGHTS, "epochs": EPOCHS, "batch_size": SHARDS, "max_open_rows": 3,
                                      **overrides})


def plan(data_dir: str, micro_steps: int = 1, **overrides):
    return count_plan(config(data_dir, **overrides), u.MODEL_CFG, num_shards=SHARDS, rows_per_micro_batch=1,
                      micro_steps=micro_steps, progress=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("mixed"))
    u.mixed_dataset(d, n_text=N_TEXT, n_image=N_IMAGE)
    return d


@pytest.fixture(scope="module")
def run(data_dir):
    """The real iterator to exhaustion: (batches, rows as (shard, batch, stream positions, (source, index)))."""
    rows, current = [], [0]
    real_next_row = PackedBatchIterator._next_row

    def recording(self):
        row = real_next_row(self)
        shard = self._process[0]
        rows.append((shard, current[0], [i for i, _ in row], [(e.source, e.index) for _, e in row]))
        return row

    batches = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PackedBatchIterator, "_next_row", recording)
        it = ShardedIterator(config(data_dir), u.MODEL_CFG, SHARDS, 0, 1)
        while True:
            current[0] = len(batches)
            try:
                batches.append(next(it))
            except StopIteration:
                break
    return batches, rows


def test_every_trace_is_seen_epochs_times_weight(run):
    _, rows = run
    seen = collections.Counter(x for *_, examples in rows for x in examples)
    want = {("text_src", i): EPOCHS * 1 for i in range(N_TEXT)} | {("image_src", i): EPOCHS * 2 for i in range(N_IMAGE)}
    assert dict(seen) == want


def test_a_weight_two_source_appears_twice_per_epoch(run):
    _, rows = run
    per_epoch = collections.Counter(
        ((shard + pos * SHARDS) // EPOCH_LEN, src, i)
        for shard, _, positions, examples in rows
        for pos, (src, i) in zip(positions, examples, strict=True)
    )
    assert set(per_epoch.values()) == {1, 2}
    assert all(n == (2 if src == "image_src" else 1) for (_, src, _), n in per_epoch.items())
    assert len(per_epoch) == EPOCHS * (N_TEXT + N_IMAGE)


def test_counted_steps_equal_the_batches_produced(data_dir, run):
    batches, rows = run
    one = plan(data_dir, micro_steps=1)
    assert one.complete and one.steps == len(batches)
    assert sum(one.rows_per_shard) == len(rows)
    assert [sum(r[0] == s for r in rows) for s in range(SHARDS)] == list(one.rows_per_shard)
    assert plan(data_dir, micro_steps=2).steps == math.ceil(len(batches) / 2)
    # The last batch is padded with empty rows, not dropped: the rows with examples fill it only partly or fully.
    real_rows_last = sum(1 for r in rows if r[1] == len(batches) - 1)
    assert int((batches[-1]["segment_ids"].max(axis=1) > 0).sum()) == real_rows_last


def test_epoch_end_steps_are_where_the_stream_passes_each_epoch(data_dir, run):
    """By an epoch's end step the real iterator has trained the whole epoch but what the packer still holds (at most
    `max_open_rows` rows per data shard), no later than the step of the epoch's last straggler, and most of the next
    epoch comes after it."""
    _, rows = run
    for micro_steps in (1, 2):
        counted = plan(data_dir, micro_steps=micro_steps)
        assert len(counted.epoch_end_steps) == EPOCHS and counted.epoch_end_steps[-1] == counted.steps
        for e, end in enumerate(counted.epoch_end_steps):
            def epochs_of(positions, shard):
                return {(shard + p * SHARDS) // EPOCH_LEN for p in positions}

            later = [(shard, positions) for shard, b, positions, _ in rows if b // micro_steps + 1 > end]
            for shard in range(SHARDS):
                held = [1 for s, positions in later if s == shard and min(epochs_of(positions, s)) <= e]
                assert len(held) <= 3  # max_open_rows
            last_straggler = max(b // micro_steps + 1 for shard, b, positions, _ in rows
                                 if min(epochs_of(positions, shard)) <= e)
            assert end <= last_straggler
            if e + 1 < EPOCHS:  # the epoch's end is not the run's: most of the next epoch comes after it
                assert sum(1 for s, positions in later if max(epochs_of(positions, s)) > e) > 3


def test_plan_mixture_counts_examples_per_source(data_dir):
    mix = plan(data_dir).mixture
    assert mix["sources"]["text_src"]["examples"] == EPOCHS * N_TEXT
    assert mix["sources"]["image_src"]["examples"] == EPOCHS * 2 * N_IMAGE
    cats = mix["categories"]
    assert (cats["text"]["examples"], cats["image-text"]["examples"]) == (EPOCHS * N_TEXT, EPOCHS * 2 * N_IMAGE)
    assert cats["text"]["example_share"] == round(N_TEXT / EPOCH_LEN, 6)


def test_a_fractional_weight_takes_the_same_seeded_subset_every_epoch(data_dir):
    cfg = config(data_dir, sources={"text_src": 0.5, "image_src": 1.0})
    keys = stream_keys(cfg, [N_TEXT, N_IMAGE], 0, 1)
    text = collections.Counter(r for p, r in (keys[k] for k in range(len(keys))) if p == 0)
    assert len(text) == N_TEXT // 2 and set(text.values()) == {EPOCHS}
    assert len(keys) == EPOCHS * (N_TEXT // 2 + N_IMAGE)


def test_the_counting_pass_reads_the_keys_training_reads(data_dir):
    # StreamKeys.arrays (vectorised, the counting pass) and StreamKeys[k] (training) are the same stream; each
    # shard is every 3rd run element, and each epoch is a new permutation of the whole weighted epoch.
    cfg = config(data_dir, sources={"text_src": 1.0, "image_src": 2.0})
    shards = [StreamKeys(cfg, [N_TEXT, N_IMAGE], s, 3) for s in range(3)]
    run = []
    for keys in shards:
        positions, records, epochs = keys.arrays()
        assert list(zip(positions.tolist(), records.tolist(), strict=True)) == [keys[k] for k in range(len(keys))]
        run += [(keys.shard + k * 3, e) for k, e in enumerate(epochs.tolist())]
    assert sorted(g for g, _ in run) == list(range(EPOCHS * EPOCH_LEN))
    assert all(g // EPOCH_LEN == e for g, e in run)
    whole = StreamKeys(cfg, [N_TEXT, N_IMAGE], 0, 1)
    first, second = ([whole[k] for k in range(e * EPOCH_LEN, (e + 1) * EPOCH_LEN)] for e in (0, 1))
    assert first != second and sorted(first) == sorted(second)  # reshuffled, same multiset


def test_cached_examples_give_the_same_batches_and_decode_each_record_once(tmp_path, monkeypatch):
    d = str(tmp_path / "data")  # fresh: no lengths cached on disk, nothing decoded in this process yet
    u.mixed_dataset(d, n_text=N_TEXT, n_image=N_IMAGE)
    want = list(ShardedIterator(config(d), u.MODEL_CFG, SHARDS, 0, 1))  # without the cache
    calls = collections.Counter()
    real_call = ExampleDecoder.__call__
    monkeypatch.setattr(ExampleDecoder, "__call__",
                        lambda self, i, r: calls.update([(self.source, i)]) or real_call(self, i, r))
    # One read thread: with several, a record read again while its first decode is still in flight (epochs here
    # are a few examples long) may be decoded twice, which is harmless but not countable.
    cached = config(d, cache_examples=True, read_threads=1)
    assert count_plan(cached, u.MODEL_CFG, num_shards=SHARDS, rows_per_micro_batch=1, micro_steps=1,
                      progress=False).steps == len(want)
    counted = sum(calls.values())
    got = list(ShardedIterator(cached, u.MODEL_CFG, SHARDS, 0, 1))
    assert len(got) == len(want)
    for batch, expected in zip(got, want, strict=True):
        assert sorted(batch) == sorted(expected)
        for key in expected:
            np.testing.assert_array_equal(batch[key], expected[key], err_msg=key)
    # The counting pass decoded every record once; training (EPOCHS x weight reads of each, over both data
    # shards) decoded none again.
    assert counted == N_TEXT + N_IMAGE and sum(calls.values()) == counted
    assert dict(calls) == {("text_src", i): 1 for i in range(N_TEXT)} | {("image_src", i): 1 for i in range(N_IMAGE)}


def test_caches_are_reused_and_invalidated(tmp_path, monkeypatch):
    d = str(tmp_path / "data")
    u.mixed_dataset(d, n_text=6, n_image=4)
    calls = []
    real_call = ExampleDecoder.__call__
    monkeypatch.setattr(ExampleDecoder, "__call__", lambda self, i, r: calls.append(i) or real_call(self, i, r))

    first = plan(d)
    assert len(calls) == 10  # every record decoded once
    assert sorted(n.split("-")[0] for n in os.listdir(os.path.join(d, CACHE_DIR))) == ["lengths", "lengths", "plan"]
    assert plan(d) == first and len(calls) == 10  # reused: no decoding
    plan(d, seq_len=512)
    assert len(calls) == 20  # seq_len changes lengths: counted again
    u.mixed_dataset(d, n_text=6, n_image=4, seed=3)  # rebuilt shards: other hashes in the manifest
    plan(d)
    assert len(calls) == 30


def test_manifest_mixture_records_weights_and_kinds_and_the_trainer_reads_the_weights(tmp_path):
    files = {"a": [ShardFile("a/x", 10, 1, "h")], "b": [ShardFile("b/y", 4, 1, "h")]}
    stats = ManifestStats()
    stats[("a", "text")].traces_kept = 10
    stats[("b", "mm_reasoning")].traces_kept = 4
    recipe = {"sources": {"a": {"weight": 0.5}, "b": {"weight": 2.0}}}
    manifest = build_manifest(files=files, out_dir=str(tmp_path), recipe=recipe, stats=stats)
    mix = manifest["mixture"]
    assert mix["sources"]["a"] == {"traces": 10, "weight": 0.5, "examples_per_epoch": 5, "category": "text"}
    assert mix["sources"]["b"] == {"traces": 4, "weight": 2.0, "examples_per_epoch": 8, "category": "image-text"}
    assert mix["examples_per_epoch"] == {"image-text": 8, "text": 5}
    assert mix["proportions"] == {"image-text": 0.615385, "text": 0.384615}
    assert mix["paper"]["examples"] == {"image-text": 3_687_105, "text": 4_408_466}
    assert mix["paper"]["proportions"] == {"image-text": 0.455447, "text": 0.544553}
    write_json(os.path.join(str(tmp_path), MANIFEST), manifest)
    assert built_sources(str(tmp_path)) == {"a": 0.5, "b": 2.0}


def test_a_state_of_the_older_stream_order_is_refused_by_version(data_dir):
    # The stream order changed (exact epochs, then NumPy keys): an older iterator state must not restore.
    it = make_iterator(config(data_dir), u.MODEL_CFG, process_index=0, process_count=1)
    state = {**it.get_state(), "version": 1}
    with pytest.raises(ValueError, match=f"version 1, this code reads {STATE_VERSION}"):
        it.set_state(state)


def test_a_row_the_packer_keeps_open_does_not_delay_the_epochs_end():
    """"Close the fullest row" keeps a row at 75 of 100 tokens open while 45-token examples cycle through fuller rows
    (nothing fits it, it is never the fullest): epoch 1's row leaves the packer in epoch 3. The epoch ends where the
    stream passes it, i.e. after the rows closed before epoch 2's first example, not at that straggler."""
    from types import SimpleNamespace

    from octomed_jax.data.epochs import Lengths, _replay
    from octomed_jax.data.packing import RowPacker

    per_epoch = [30] + [45] * 7
    stream = [(e, r) for e in range(3) for r in range(len(per_epoch))]
    keys = SimpleNamespace(arrays=lambda: (np.zeros(len(stream), np.int64), np.asarray([r for _, r in stream]),
                                           np.asarray([e for e, _ in stream])))
    lengths = [Lengths(np.asarray(per_epoch, np.int32), np.zeros(len(per_epoch), np.int32), {})]
    cfg = SimpleNamespace(seq_len=100, max_patches=10, packing="best_fit", max_open_rows=3, epochs=3)
    rows, passed, complete = _replay(cfg, keys, lengths, None)
    packer, closed, first_of_epoch, row_of = RowPacker(100, 10, "best_fit", 3), 0, {}, {}
    for item in stream:
        first_of_epoch.setdefault(item[0], closed)
        for row in packer.add(item, per_epoch[item[1]], 0):
            row_of.update({x: closed for x in row})
            closed += 1
    for row in packer.flush():
        row_of.update({x: closed for x in row})
        closed += 1
    straggler = max(i for x, i in row_of.items() if x[0] == 0)
    assert complete and rows == closed and passed == [first_of_epoch[1], first_of_epoch[2], rows]
    assert straggler >= first_of_epoch[2] > passed[0]  # the old end of epoch 1 was in epoch 3
