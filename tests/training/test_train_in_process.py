"""`train()` in this process on the tiny run: the in-training eval is logged with training, `num_steps=-1` counts
the epochs' steps, a non-finite loss stops the run naming its step, init from a Hugging Face folder. Apart from
test_trainer.py (the training job as subprocesses) so that xdist runs the two on different workers (CI time)."""

import json
import os
import sys

import numpy as np
import pytest
from flax import nnx

HERE = os.path.dirname(__file__)
sys.path.insert(0, HERE)
import dataset  # noqa: E402
import tiny_config  # noqa: E402

from octomed_jax import sharding  # noqa: E402

pytestmark = pytest.mark.slow(seconds=210)  # about its CI time: xdist starts it early (conftest.py)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return dataset.build(str(tmp_path_factory.mktemp("data")))


def test_in_process_eval_is_logged_with_training(data_dir, tmp_path):
    """A held-out MedQA subset (public jsonl layout) evaluated at start, every 2 steps and at the end."""
    bench = tmp_path / "bench" / "medqa"
    bench.mkdir(parents=True)
    rows = [{"question": f"Case {i}: which drug?", "options": {"A": "aspirin", "B": "heparin", "C": "insulin"},
             "answer": "heparin", "answer_idx": "B", "meta_info": "step1"} for i in range(3)]
    (bench / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = tiny_config.get_config()
    cfg.data.data_dir = data_dir
    cfg.train.num_steps = 3
    cfg.export.hf = False
    cfg.eval.update(data_dir=str(tmp_path / "bench"), benchmarks="medqa", every=2, at_start=True, max_new_tokens=4)
    from octomed_jax.training.trainer import train

    summary = train(cfg, str(tmp_path / "run"))
    assert sorted(summary["eval"]) == [0, 2, 3]
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 3]
    for r in evals:
        assert 0.0 <= r["accuracy/medqa"] <= 100.0 and r["accuracy/text"] == r["accuracy/medqa"]
        assert 0 < r["response_tokens/medqa"] <= 4


def test_num_steps_minus_one_is_the_counted_steps_of_the_epochs(data_dir, tmp_path):
    cfg = tiny_config.get_config()
    cfg.data.update(data_dir=data_dir, epochs=2)
    cfg.train.num_steps = -1
    from octomed_jax.training.trainer import run_contract

    contract, plan = run_contract(cfg, sharding.make_mesh(dict(cfg.mesh)), str(tmp_path))
    assert plan.complete and contract.train.total_steps == plan.steps
    assert len(plan.epoch_end_steps) == 2 and contract.train.epoch_end_steps == plan.epoch_end_steps
    assert plan.epoch_end_steps[-1] == plan.steps


def test_a_non_finite_loss_stops_the_run_naming_the_step(data_dir, tmp_path):
    cfg = tiny_config.get_config()
    cfg.data.data_dir = data_dir
    cfg.optim.update(learning_rate=1e30, warmup_ratio=0.0, schedule="constant", grad_clip=0.0)
    cfg.train.num_steps = 4
    cfg.export.hf = False
    from octomed_jax.training.trainer import NonFiniteLossError, train

    with pytest.raises(NonFiniteLossError, match=r"at step [2-4] \(batch of data position"):
        train(cfg, str(tmp_path))


def test_init_from_a_hugging_face_folder(tmp_path):
    from octomed_jax.contract import RunContract
    from octomed_jax.hf import save_hf
    from octomed_jax.models.qwen2_5_vl import init_model
    from octomed_jax.training.trainer import build_model

    cfg = tiny_config.get_config()
    contract = RunContract.from_config(cfg, total_steps=1)
    source = init_model(contract.model, seed=7)
    save_hf(source, str(tmp_path / "hf"))
    cfg.init_from = str(tmp_path / "hf")
    mesh = sharding.make_mesh(dict(cfg.mesh))
    model = build_model(cfg, contract, mesh, sharding.DEFAULT_RULES)
    want = {k: v.get_value() for k, v in nnx.to_flat_state(nnx.state(source, nnx.Param))}
    for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        np.testing.assert_array_equal(np.asarray(v.get_value()), np.asarray(want[k]), err_msg=str(k))
        assert v.get_value().sharding.mesh.shape == mesh.shape
