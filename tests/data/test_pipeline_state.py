"""Iterator state: a restore mid-epoch yields exactly the batches an uninterrupted run yields next,
in process or with worker processes, directly or through an Orbax checkpoint."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import packed_data_util as u  # noqa: E402

from octomed_jax.data import checkpointing, make_iterator  # noqa: E402

N_BATCHES = 8
SPLIT = 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("mixed"))
    u.mixed_dataset(d)
    return d


@pytest.fixture(scope="module")
def reference(data_dir):
    """The first N_BATCHES batches of an uninterrupted run, and every batch of the whole run."""
    it = make_iterator(u.data_config(data_dir), u.MODEL_CFG, process_index=0, process_count=1)
    batches = list(it)
    return batches, it.counts()


def assert_batches_equal(got, want):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.keys() == w.keys()
        for k in w:
            np.testing.assert_array_equal(g[k], w[k], err_msg=f"batch {i} {k}")


def interrupted_state(data_dir):
    it = make_iterator(u.data_config(data_dir), u.MODEL_CFG, process_index=0, process_count=1)
    for _ in range(SPLIT):
        next(it)
    return it


def test_whole_run_reads_every_record_of_every_epoch(reference):
    batches, counts = reference
    assert counts["records"] == 2 * (24 + 16)  # 2 epochs, weight 1: each record once per epoch
    assert counts["per_source"] == {"image_src": 32, "text_src": 48}
    assert counts["errors"] == {} and counts["dropped"] == {}
    p = counts["packing"]
    assert p["rows"] in (2 * len(batches), 2 * len(batches) - 1)  # an odd last row is padded, not dropped
    real = sum(int((b["segment_ids"] > 0).sum()) for b in batches)
    assert real == p["tokens"] and 0 < p["efficiency"] <= 1
    assert len(batches) > SPLIT + 5


def test_restore_mid_epoch_in_process(data_dir, reference):
    it = interrupted_state(data_dir)
    state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
    assert state["open_rows"], "the split must fall inside packing (open rows) to test their restore"
    rest = list(it)
    assert_batches_equal(rest, reference[0][SPLIT:])

    fresh = make_iterator(u.data_config(data_dir), u.MODEL_CFG, process_index=0, process_count=1)
    fresh.set_state(state)
    assert_batches_equal(list(fresh), reference[0][SPLIT:])
    assert fresh.counts() == reference[1]


def test_restore_with_two_worker_processes(data_dir, reference):
    state = interrupted_state(data_dir).get_state()
    it = make_iterator(u.data_config(data_dir, num_workers=2), u.MODEL_CFG, process_index=0, process_count=1)
    try:
        it.set_state(state)
        got = [next(it) for _ in range(N_BATCHES - SPLIT)]
    finally:
        it.close()
    assert_batches_equal(got, reference[0][SPLIT:N_BATCHES])


def test_restore_through_orbax_checkpoint_manager(data_dir, reference, tmp_path):
    it = interrupted_state(data_dir)
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as manager:
        checkpointing.save(manager, SPLIT, it, state=ocp.args.StandardSave({"w": np.arange(4.0)}))
        manager.wait_until_finished()
    next(it)  # the live iterator moves on; the checkpoint must not

    fresh = make_iterator(u.data_config(data_dir), u.MODEL_CFG, process_index=0, process_count=1)
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as manager:
        restored = checkpointing.restore(manager, fresh, state=ocp.args.StandardRestore({"w": np.zeros(4)}))
    np.testing.assert_array_equal(restored["state"]["w"], np.arange(4.0))
    assert_batches_equal([next(fresh) for _ in range(2)], reference[0][SPLIT : SPLIT + 2])


def test_restore_under_another_data_config_fails_clearly(data_dir):
    state = interrupted_state(data_dir).get_state()
    other = make_iterator(u.data_config(data_dir, seq_len=512), u.MODEL_CFG, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="seq_len"):
        other.set_state(state)
    # Batch size and workers are not part of the fingerprint: they may change on restore.
    ok = make_iterator(u.data_config(data_dir, batch_size=1), u.MODEL_CFG, process_index=0, process_count=1)
    ok.set_state(state)
    assert next(ok)["input_ids"].shape == (1, 256)
