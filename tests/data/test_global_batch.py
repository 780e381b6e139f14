"""Host batches -> global TrainBatch with the mesh's batch sharding (8 fake CPU devices)."""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(__file__))

import packed_data_util as u  # noqa: E402

from octomed_jax.data import (  # noqa: E402
    TrainBatch,
    abstract_train_batch,
    pack_rows,
    to_global_batch,
    train_batch_shardings,
)
from octomed_jax.models.config import VisionConfig  # noqa: E402
from octomed_jax.sharding import make_mesh  # noqa: E402

BATCH = ("data", "fsdp")


def host_batch():
    rows = [[u.synthetic_example(4 * r + k, [(1, 4, 4)] * (k % 2), 6 + r, seed=r) for k in range(2)] for r in range(4)]
    return pack_rows(rows, seq_len=64, max_patches=64, vcfg=u.MODEL_CFG.vision)


def test_global_batch_shardings_and_values():
    assert jax.device_count() == 8
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    host = host_batch()
    batch = to_global_batch(host, mesh)
    assert isinstance(batch, TrainBatch)
    x = batch.inputs
    assert x.input_ids.sharding.spec == P(BATCH, None)
    assert x.positions.shape == (3, 4, 64) and x.positions.sharding.spec == P(None, BATCH, None)
    assert x.vision.pixel_values.shape == (4, 64, 1176) and x.vision.pixel_values.sharding.spec == P(BATCH, None, None)
    assert x.vision.window_index.shape == (4, 16)
    assert batch.loss_mask.sharding.spec == P(BATCH, None) and batch.targets.dtype == np.int32
    np.testing.assert_array_equal(np.asarray(x.positions), host["positions"].transpose(1, 0, 2))
    np.testing.assert_array_equal(np.asarray(x.vision.rotary_positions), host["rotary_positions"])
    # Each row lives on the 2 devices (tensor replicas) of its (data, fsdp) coordinate.
    for shard in x.input_ids.addressable_shards:
        assert shard.data.shape == (1, 64)
        np.testing.assert_array_equal(np.asarray(shard.data), host["input_ids"][shard.index])
    # The declared shardings (for jit in_shardings) are the ones the arrays carry.
    declared = train_batch_shardings(mesh)
    for got, want in zip(jax.tree.leaves(batch), jax.tree.leaves(declared), strict=True):
        assert got.sharding == want
    abstract = abstract_train_batch(4, 64, 64, VisionConfig(), mesh)
    for got, want in zip(jax.tree.leaves(batch), jax.tree.leaves(abstract), strict=True):
        assert (got.shape, got.dtype, got.sharding) == (want.shape, want.dtype, want.sharding)

    @jax.jit
    def tokens_with_loss(b: TrainBatch) -> jax.Array:
        return (b.loss_mask * (b.inputs.segment_ids > 0)).sum()

    assert float(tokens_with_loss(batch)) == host["loss_mask"].sum()


def test_text_only_batch_has_no_vision():
    mesh = make_mesh({"data": -1})
    rows = [[u.synthetic_example(i, [], 10)] for i in range(8)]
    batch = to_global_batch(pack_rows(rows, seq_len=32, max_patches=0, vcfg=u.MODEL_CFG.vision), mesh)
    assert batch.inputs.vision is None and batch.inputs.input_ids.sharding.spec == P(BATCH, None)
    assert train_batch_shardings(mesh, with_vision=False).inputs.vision is None
