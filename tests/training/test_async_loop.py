"""The loop that never waits on the host: inputs prepared in the background are the arrays (values and
shardings) the loop placed in line before, so the compiled step trains to the same losses; the checkpoint
saves the data position of the batches trained (not of those prepared ahead); a non-finite loss found at a
later sync names its own step and leaves no checkpoint after it. One training run (CI time)."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

HERE = os.path.dirname(__file__)
sys.path.insert(0, HERE)
import dataset  # noqa: E402
import tiny_config  # noqa: E402

from octomed_jax import sharding  # noqa: E402
from octomed_jax.data import to_global_batch  # noqa: E402
from octomed_jax.data.global_batch import to_global_micro_batches  # noqa: E402
from octomed_jax.data.shards import ShardedIterator  # noqa: E402
from octomed_jax.training.prefetch import Prefetcher  # noqa: E402
from octomed_jax.training.trainer import NonFiniteLossError, run_contract, train  # noqa: E402

pytestmark = pytest.mark.slow(seconds=130)  # about its CI time: xdist starts it early (conftest.py)

POISONED_AFTER = 2  # the params become NaN after step 2 is trained and saved: step 3 is the first bad step


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(config, mesh, contract) of the tiny run: 2 micro-batches of 4 rows per step, 4 steps."""
    cfg = tiny_config.get_config()
    cfg.data.data_dir = dataset.build(str(tmp_path_factory.mktemp("data")))
    cfg.train.update(num_steps=4, log_every=2)
    cfg.export.hf = False
    cfg.eval.every = POISONED_AFTER
    mesh = sharding.make_mesh(dict(cfg.mesh))
    contract, _ = run_contract(cfg, mesh, str(tmp_path_factory.mktemp("plan")))
    assert contract.train.micro_steps == 2
    return cfg, mesh, contract


def fresh_iterator(contract):
    return ShardedIterator(contract.data, contract.model, 1, 0, 1)


def state_after(contract, steps):
    """The data iterator's state after exactly `steps` steps' batches."""
    it = fresh_iterator(contract)
    for _ in range(steps * contract.train.micro_steps):
        next(it)
    return it.get_state()


@pytest.mark.parametrize("depth", [2, 0])
def test_prepared_inputs_equal_the_inputs_placed_in_line(setup, depth):
    _, mesh, contract = setup
    micro = contract.train.micro_steps
    ahead = Prefetcher(fresh_iterator(contract), lambda b: to_global_micro_batches(b, mesh), micro, steps=3,
                       depth=depth)
    inline = fresh_iterator(contract)
    for step in range(1, 4):
        got = next(ahead)
        host = [next(inline) for _ in range(micro)]
        with jax.set_mesh(mesh):  # what the loop placed before: each micro-batch, then stacked on the devices
            want = jax.tree.map(lambda *xs: jnp.stack(xs), *[to_global_batch(b, mesh) for b in host])
        for g, w in zip(jax.tree.leaves(got.batch), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
            assert g.sharding.is_equivalent_to(w.sharding, g.ndim)
        assert got.state == inline.get_state() and got.read_data
        assert got.patches == sum(int((b["image_segment_ids"] > 0).sum()) for b in host)
        # The consumed position: the steps handed out, although the thread has read ahead.
        assert ahead.get_state() == state_after(contract, step)
    with pytest.raises(StopIteration):  # never reads past the steps asked for
        next(ahead)
    ahead.close()


@pytest.fixture(scope="module")
def poisoned_run(setup, tmp_path_factory):
    """A prefetching run whose params become NaN after step 2 (through the eval hook); (workdir, error)."""
    cfg, _, _ = setup
    workdir = str(tmp_path_factory.mktemp("poisoned"))

    def poison(model, step):
        if step == POISONED_AFTER:
            nnx.update(model, jax.tree.map(lambda x: x * jnp.nan, nnx.state(model, nnx.Param)))
        return {}

    with pytest.raises(NonFiniteLossError) as err:
        train(cfg, workdir, evaluate_fn=poison, prefetch=2)
    return workdir, str(err.value)


def test_metrics_are_read_back_at_log_steps(poisoned_run):
    workdir, _ = poisoned_run
    logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train_logs = [r for r in logged if r["kind"] == "train"]
    assert [r["step"] for r in train_logs] == [2]  # log_every=2; step 4 was never logged (the NaN stop)
    assert np.isfinite(train_logs[0]["loss"]) and train_logs[0]["loss_tokens"] > 0
    assert 0.0 <= train_logs[0]["input_wait"] <= train_logs[0]["step_time"]


def test_a_nan_is_named_at_its_step_and_no_checkpoint_follows_it(setup, poisoned_run):
    _, _, contract = setup
    workdir, message = poisoned_run
    assert message.startswith("loss is nan (gradient norm nan) at step 3 (batch of data position ")
    # Read back at the next step, or at once when an epoch ends at step 3 (its checkpoint waits for the loss).
    seen = 3 if 3 in contract.train.epoch_end_steps else 4
    assert f"position {state_after(contract, 3)}); seen at step {seen}," in message
    assert max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == POISONED_AFTER


def test_the_checkpoint_saves_the_data_position_of_the_steps_trained(setup, poisoned_run):
    _, _, contract = setup
    workdir, _ = poisoned_run
    saved = os.path.join(workdir, "checkpoints", str(POISONED_AFTER), "data", "process_0-of-1.json")
    with open(saved) as f:
        assert json.load(f) == state_after(contract, POISONED_AFTER)  # although the thread may have read steps 3-4
