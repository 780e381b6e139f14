"""The training job end to end: resume after SIGTERM and SIGKILL equals an uninterrupted run; two processes
equal one; a checkpoint restores onto another mesh; missing data fails at once."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

HERE = os.path.dirname(__file__)
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import dataset  # noqa: E402
import tiny_config  # noqa: E402

from octomed_jax import sharding  # noqa: E402
from octomed_jax.models.qwen2_5_vl import Qwen25VL  # noqa: E402
from octomed_jax.training import checkpointing  # noqa: E402
from octomed_jax.training.optimizer import make_optimizer  # noqa: E402

pytestmark = pytest.mark.slow(seconds=500)  # about its CI time: xdist starts it early (conftest.py)

CONFIG = os.path.join(HERE, "tiny_config.py")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return dataset.build(str(tmp_path_factory.mktemp("data")))


def train_command(data_dir, workdir, *overrides):
    return [sys.executable, "-m", "octomed_jax.train", f"--config={CONFIG}", f"--config.data.data_dir={data_dir}",
            f"--workdir={workdir}", *overrides]


@pytest.fixture(scope="module")
def env(child_env):
    """`env(devices)`: a trainer's environment on `devices` fake CPU devices, sharing the session's compile cache."""
    return lambda devices=8: child_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                                       JAX_PLATFORMS="cpu")


def losses(workdir):
    """Step -> loss from metrics.jsonl; a step logged again after a resume keeps its last value."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r["kind"] == "train":
                out[r["step"]] = r["loss"]
    return out


def run_until(cmd, env, workdir, step, sig, timeout=300):
    """Starts `cmd` in `env`, sends `sig` once `step` is logged, returns the exit code."""
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    path = os.path.join(workdir, "metrics.jsonl")
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(path) and max(losses(workdir), default=0) >= step:
            proc.send_signal(sig)
            break
        time.sleep(0.2)
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode is not None, err
    return proc.returncode, err


@pytest.fixture(scope="module")
def uninterrupted(data_dir, env, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    r = subprocess.run(train_command(data_dir, workdir), env=env(), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return workdir


def test_run_outputs(uninterrupted):
    records = [json.loads(line) for line in open(os.path.join(uninterrupted, "metrics.jsonl"))]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 9))
    for key in ("loss", "learning_rate", "grad_norm", "tokens_per_second", "packing_efficiency", "step_time"):
        assert all(np.isfinite(r[key]) for r in train), key
    assert train[-1]["loss"] < train[0]["loss"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(uninterrupted, "tensorboard")))
    from octomed_jax.checkpoint import load_contract

    # Saved every 2 steps, at each epoch's end and at the last step; keep=2 leaves the latest two.
    ends = load_contract(uninterrupted).train.epoch_end_steps
    saved = sorted({*range(2, 9, 2), *ends, 8})
    assert sorted(os.listdir(os.path.join(uninterrupted, "checkpoints")), key=int) == [str(s) for s in saved[-2:]]
    from octomed_jax.hf import load_hf

    exported = load_hf(os.path.join(uninterrupted, "hf"))
    assert exported.cfg.text.hidden_size == 64
    assert os.path.exists(os.path.join(uninterrupted, "hf", "chat_template.jinja"))


def test_sigterm_and_sigkill_resume_to_the_same_losses(data_dir, uninterrupted, env, tmp_path):
    workdir = str(tmp_path)
    cmd = train_command(data_dir, workdir)
    code, err = run_until(cmd, env(), workdir, step=3, sig=signal.SIGTERM)
    assert code == 0, err[-3000:]  # preemption: saved and exited cleanly
    saved = max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))
    assert saved == max(losses(workdir))  # the checkpoint is at the last step trained
    code, err = run_until(cmd, env(), workdir, step=6, sig=signal.SIGKILL)
    assert code == -signal.SIGKILL, err[-3000:]
    r = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    want, got = losses(uninterrupted), losses(workdir)
    assert sorted(got) == sorted(want)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=0, atol=1e-6)


def test_two_processes_train_like_one(data_dir, env, child_env, tmp_path):
    overrides = ["--config.train.num_steps=3", "--config.data.num_shards=2", "--config.mesh.data=1",
                 "--config.mesh.tensor=2", "--config.export.hf=False"]
    one = str(tmp_path / "one")
    r = subprocess.run(train_command(data_dir, one, *overrides), env=env(4), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    two = str(tmp_path / "two")
    launcher = [sys.executable, os.path.join(ROOT, "launch", "local.py"), "--num_processes=2",
                "--devices_per_process=2", f"--log_dir={tmp_path / 'logs'}", "--"]
    r = subprocess.run(launcher + train_command(data_dir, two, *overrides), env=child_env(), cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=0, atol=1e-5)
    assert os.path.isdir(os.path.join(two, "checkpoints", "3"))
    # The two-process checkpoint restores in this single process (model and optimizer; another mesh).
    restored_two, restored_one = restore_params(two, {"fsdp": 8}), restore_params(one, {"fsdp": 8})
    assert restored_two[0] == restored_one[0] == 3
    for name, value in restored_one[1].items():
        np.testing.assert_allclose(np.asarray(restored_two[1][name]), np.asarray(value), rtol=0, atol=1e-5)


def restore_params(workdir, layout):
    """(step, params) of the latest checkpoint in `workdir`, restored onto `layout` in this process."""
    from octomed_jax.contract import model_config_from

    cfg = tiny_config.get_config()
    mesh = sharding.make_mesh(layout)
    model = sharding.create_model(lambda: Qwen25VL(model_config_from(cfg), rngs=nnx.Rngs(1)), mesh,
                                  sharding.DEFAULT_RULES)
    optimizer = nnx.Optimizer(model, make_optimizer(cfg.optim, 8)[0], wrt=nnx.Param)
    manager = checkpointing.make_manager(os.path.join(workdir, "checkpoints"), save_every=2, keep=2)
    step, _ = checkpointing.restore_latest(manager, model, optimizer, jax.random.key(0), None)
    return step, {".".join(map(str, k)): v.get_value() for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_checkpoint_restores_onto_another_mesh(uninterrupted):
    step_a, a = restore_params(uninterrupted, {"data": 2, "fsdp": 2, "tensor": 2})  # the layout it was saved from
    step_b, b = restore_params(uninterrupted, {"fsdp": 8})
    assert step_a == step_b == 8
    for name in a:
        np.testing.assert_array_equal(np.asarray(b[name]), np.asarray(a[name]), err_msg=name)
    kernel = b["language_model.layers.mlp.up_proj.kernel"]
    assert kernel.addressable_shards[0].data.shape == (kernel.shape[0], kernel.shape[1] // 8, kernel.shape[2])


def test_full_mix_without_data_or_weights_fails_at_once(env, tmp_path):
    r = subprocess.run([sys.executable, "-m", "octomed_jax.train", "--config=full_mix", f"--workdir={tmp_path}"],
                       env=env(1), cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "manifest.json missing" in r.stderr and "Qwen2.5-VL-7B-Instruct" in r.stderr
    assert "python -m data_pipeline.build --config=full_mix" in r.stderr and "python -m octomed_demo" in r.stderr
