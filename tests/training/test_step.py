"""The train step: sharded equals unsharded, accumulation equals a bigger batch, a tiny model overfits."""

import contextlib

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from helpers import compiles, example, pack_rows, with_micro_axis

from octomed_jax import sharding
from octomed_jax.models.config import get_preset
from octomed_jax.models.qwen2_5_vl import Qwen25VL
from octomed_jax.training.optimizer import make_optimizer
from octomed_jax.training.step import LossConfig, jit_train_step

pytestmark = pytest.mark.slow(seconds=380)  # about its CI time: xdist starts it early (conftest.py)

CFG = get_preset("tiny_vocab")
# Adam's eps well above the gradients' rounding error: with eps=1e-8 a parameter whose gradient is ~0
# moves by lr * sign(rounding noise), which no reduction order can reproduce.
OPTIM = ml_collections.ConfigDict(dict(learning_rate=1e-3, schedule="constant", warmup_ratio=0.0, final_lr_ratio=0.0,
                                       weight_decay=0.01, b1=0.9, b2=0.95, eps=1e-4, grad_clip=1.0, freeze=[]))


def rows(seed=0, n_rows=8):
    rng = np.random.RandomState(seed)
    out = []
    for r in range(n_rows):
        grid = [1, 4, 4] if r % 2 else None
        out.append([example(rng, 6, 5, grid), example(rng, 4, 3)])
    return out


def build(mesh=None, freeze=(), **optim_overrides):
    optim = OPTIM.copy_and_resolve_references()
    optim.freeze = list(freeze)
    optim.update(optim_overrides)
    make = lambda: Qwen25VL(CFG, rngs=nnx.Rngs(0))  # noqa: E731
    if mesh is None:
        with nnx.use_eager_sharding(False):
            model = make()
    else:
        model = sharding.create_model(make, mesh, sharding.DEFAULT_RULES)
    tx, _ = make_optimizer(optim, total_steps=10)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    if mesh is not None:
        sharding.place_unsharded(optimizer, mesh)  # as the trainer does: the step count joins the mesh
    return model, optimizer


def params(model):
    return {".".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def run(batch, mesh=None, steps=1, micro=1, freeze=()):
    model, opt = build(mesh, freeze)
    step = jit_train_step(LossConfig(chunk=16), model, opt)
    batch = with_micro_axis(batch, micro)
    losses = []
    with compiles("step") as compiled:
        for _ in range(steps):
            with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
                m = step(model, opt, batch)
            losses.append(float(m.loss))
    assert len(compiled) == 1, compiled  # the state comes back sharded as it went in: no second compile
    return losses, params(model), m


@pytest.fixture(scope="module")
def batch():
    return pack_rows(CFG, rows(), seq_len=48, max_patches=16)


@pytest.fixture(scope="module")
def single_device(batch):
    return run(batch, steps=2)


@pytest.mark.parametrize("layout", [{"data": 2, "fsdp": 2, "tensor": 2}, {"fsdp": 4, "tensor": 2}], ids=str)
def test_sharded_step_equals_one_device(batch, single_device, layout):
    mesh = sharding.make_mesh(layout)
    batch_sharding = sharding.batch_sharding(mesh, sharding.DEFAULT_RULES, 2)
    placed = jax.device_put(batch, jax.tree.map(lambda x: batch_sharding if x.ndim == 2 and x.shape[0] == 8 else
                                                jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), batch))
    losses, p, _ = run(placed, mesh, steps=2)
    np.testing.assert_allclose(losses, single_device[0], rtol=0, atol=1e-5)
    for name, value in single_device[1].items():
        np.testing.assert_allclose(p[name], value, rtol=0, atol=1e-5, err_msg=name)


def test_accumulation_over_four_micro_batches_equals_one_big_batch(batch, single_device):
    losses, p, m = run(batch, steps=2, micro=4)
    np.testing.assert_allclose(losses, single_device[0], rtol=0, atol=1e-6)
    for name, value in single_device[1].items():
        np.testing.assert_allclose(p[name], value, rtol=0, atol=1e-6, err_msg=name)
    assert float(m.loss_tokens) == float(np.asarray(batch.loss_mask).sum())


def test_loss_counts_only_assistant_tokens(batch):
    _, _, m = run(batch)
    assert float(m.loss_tokens) == 8 * (5 + 3)
    assert int(m.real_tokens) == int((np.asarray(batch.inputs.segment_ids) > 0).sum())
    # Uniform logits would give log(vocab); a random init is close to it.
    assert abs(float(m.loss) - np.log(CFG.text.vocab_size)) < 0.5


def test_freezing_the_vision_tower_keeps_it(batch):
    before = params(build()[0])
    _, after, _ = run(batch, steps=2, freeze=("vision", "merger"))
    for name in before:
        changed = not np.array_equal(before[name], after[name])
        assert changed == name.startswith("language_model"), name


@pytest.mark.parametrize("packed", [True, False])
def test_tiny_model_overfits_a_small_batch(packed):
    rng = np.random.RandomState(3)
    examples = [example(rng, 5, 6, [1, 4, 4] if i % 2 else None) for i in range(4)]
    row_list = [examples[:2], examples[2:]] if packed else [[e] for e in examples]
    b = pack_rows(CFG, row_list, seq_len=48 if packed else 24, max_patches=16)
    model, opt = build(learning_rate=1e-2, eps=1e-8)
    step = jit_train_step(LossConfig(chunk=64), model, opt)
    mb = with_micro_axis(b, 1)
    losses = [float(step(model, opt, mb).loss) for _ in range(60)]
    assert losses[-1] < 0.1 * losses[0], losses[::10]


def test_optimizer_rejects_unknown_part():
    optim = OPTIM.copy_and_resolve_references()
    optim.freeze = ["decoder"]
    with pytest.raises(ValueError, match="unknown parts"):
        make_optimizer(optim, 10)


def test_lr_schedule_is_the_papers_shape():
    optim = OPTIM.copy_and_resolve_references()
    optim.schedule, optim.warmup_ratio, optim.learning_rate = "cosine", 0.1, 5e-5
    _, schedule = make_optimizer(optim, 100)
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(5e-5)
    assert float(schedule(55)) == pytest.approx(2.5e-5, rel=1e-3)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)
