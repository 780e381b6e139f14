"""The model on a mesh of 8 fake CPU devices: same logits, and every parameter sharded by the rules."""

import jax
import numpy as np
import pytest
from conftest import image_prompt, pixels
from flax import nnx
from jax.sharding import PartitionSpec as P

from octomed_jax import sharding
from octomed_jax.hf import load_hf
from octomed_jax.models.qwen2_5_vl import Qwen25VL

LAYOUTS = [
    {"data": 2, "fsdp": 2, "tensor": 2},
    {"fsdp": -1},
    {"data": 2, "tensor": 4},
]


def flat_params(model):
    return {".".join(map(str, k)): v for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.fixture(scope="module")
def inputs(tiny_cfg):
    """8 rows (divisible by every batch split), right-padded, one small image in each."""
    row_grids = [[[1, 4, 8]], [[1, 6, 4]], [[1, 2, 2]], [[1, 4, 4]]] * 2
    rows = [image_prompt(g, [2 + r, 3 + r % 3], start=r) for r, g in enumerate(row_grids)]
    length = max(map(len, rows))
    ids = np.zeros((len(rows), length), np.int64)
    mask = np.zeros_like(ids)
    for r, seq in enumerate(rows):
        ids[r, : len(seq)] = seq
        mask[r, : len(seq)] = 1
    grids = np.array([g for row in row_grids for g in row])
    return ids, pixels(grids, tiny_cfg.vision.patch_dim), grids, mask


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_sharded_forward_equals_unsharded(ours, hf_checkpoint, inputs, layout):
    assert jax.device_count() == 8
    mesh = sharding.make_mesh(layout)
    model = load_hf(hf_checkpoint[1], mesh=mesh)
    batch = model.prepare_inputs(*inputs[:3], inputs[3])
    batch_sharded = jax.device_put(
        batch, batch.replace(
            input_ids=sharding.batch_sharding(mesh, sharding.DEFAULT_RULES, 2),
            positions=sharding.batch_sharding(mesh, sharding.DEFAULT_RULES, 3, batch_axis=1),
            segment_ids=sharding.batch_sharding(mesh, sharding.DEFAULT_RULES, 2),
            vision=jax.tree.map(lambda _: jax.sharding.NamedSharding(mesh, P()), batch.vision),
        ))

    @nnx.jit
    def forward(model: Qwen25VL, batch):
        return model.forward(batch)

    with jax.set_mesh(mesh):
        got = forward(model, batch_sharded)
    want = ours.forward(ours.prepare_inputs(*inputs[:3], inputs[3]))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


def test_parameters_carry_the_rules_shardings(hf_checkpoint):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    params = flat_params(load_hf(hf_checkpoint[1], mesh=mesh))
    expected = {
        "language_model.layers.self_attn.q_proj.kernel": P(None, "fsdp", "tensor"),
        "language_model.layers.mlp.down_proj.kernel": P(None, "tensor", "fsdp"),
        "language_model.embed_tokens.embedding": P("tensor", "fsdp"),
        "language_model.lm_head.kernel": P("fsdp", "tensor"),
        "language_model.norm.scale": P(None),
        "visual.blocks.qkv.kernel": P(None, "fsdp", "tensor"),
        "visual.merger.mlp_out.kernel": P("tensor", "fsdp"),
    }
    for name, spec in expected.items():
        got = params[name].get_value().sharding
        assert got.mesh.shape == mesh.shape and got.spec == spec, (name, got.spec)
    q = params["language_model.layers.self_attn.q_proj.kernel"].get_value()
    # Each device holds 1/4 of the q kernel (fsdp x tensor), all layers of it.
    assert q.addressable_shards[0].data.shape == (q.shape[0], q.shape[1] // 2, q.shape[2] // 2)


def test_other_rules_give_other_layouts(hf_checkpoint):
    mesh = sharding.make_mesh({"tensor": 8})
    rules = (("embed", None), ("mlp", "tensor"), ("heads", None), ("vocab", "tensor"))
    params = flat_params(load_hf(hf_checkpoint[1], mesh=mesh, rules=rules))
    assert params["language_model.layers.mlp.up_proj.kernel"].get_value().sharding.spec == P(None, None, "tensor")
    assert params["language_model.layers.self_attn.q_proj.kernel"].get_value().sharding.spec == P(None, None, None)


def test_create_model_shards_at_creation(tiny_cfg):
    mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
    model = sharding.create_model(lambda: Qwen25VL(tiny_cfg, rngs=nnx.Rngs(0)), mesh, sharding.DEFAULT_RULES)
    kernel = flat_params(model)["language_model.layers.mlp.gate_proj.kernel"].get_value()
    assert kernel.sharding.spec == P(None, "fsdp", "tensor")
    assert len({s.device for s in kernel.addressable_shards}) == 8


def test_mesh_errors():
    with pytest.raises(ValueError, match="needs 12 devices"):
        sharding.make_mesh({"data": 3, "tensor": 4})
    with pytest.raises(ValueError, match="unknown"):
        sharding.make_mesh({"model": 8})


def test_config_rules_equal_library_defaults():
    """configs/ writes the rules out (no JAX import there); they must stay the library's defaults."""
    from configs import base

    assert tuple(tuple(r) for r in base.SHARDING_RULES) == sharding.DEFAULT_RULES
    assert [tuple(r) for r in base.get_config().rules] == [tuple(r) for r in sharding.DEFAULT_RULES]
