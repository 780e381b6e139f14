"""What the training loop adds to the compiled step: the loop's time per step over the step's time alone.

    python benchmarks/bench_loop.py [--steps=20 --prefetch 2 0 --devices=1]

On the tiny test model and data (`tests/training/tiny_config.py`, `tests/training/dataset.py`), in one
process: `train` runs 2 x `--steps` steps logging every `--steps`, so the second log's `step_time` and
`input_wait` are per-step averages over steps that exclude compilation (wall time between the two syncs,
and the part of it the loop waited for its input); then the same compiled step runs `--steps` times on one
placed batch, alone. The goal: the loop adds at most 10% (ratio <= 1.10) with prefetching. `--prefetch 0`
prepares every step's input in the training thread, for comparison. Other processes on the cores stretch
both numbers; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "training"))
GOAL = 1.10


def loop_time(cfg, workdir: str, steps: int, prefetch: int) -> tuple[float, float]:
    """(seconds per step, input wait per step) of `train` over its last `steps` steps."""
    from octomed_jax.training.trainer import train

    cfg = cfg.copy_and_resolve_references()
    cfg.train.update(num_steps=2 * steps, log_every=steps)
    train(cfg, workdir, evaluate_fn=lambda *_: {}, prefetch=prefetch)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        last = [r for r in map(json.loads, f) if r["kind"] == "train"][-1]
    assert last["step"] == 2 * steps, last
    return last["step_time"], last["input_wait"]


def step_time(cfg, workdir: str, steps: int) -> dict[str, float]:
    """Seconds per step of the compiled train step on one placed batch, and of the input path.

    Returns:
      `alone`: the step by itself; `prepare`: the trainer's input path (`Prefetcher`: read, pack, place) run
      alone in this thread; `alongside`: the step while that input path runs in a background thread, as in
      the loop. On a CPU backend the "device" is these same cores, so `alongside` is the best the loop can
      reach here: what it adds over `alone` is the input work's share of the cores, not time the loop waits.
    """
    import jax
    from flax import nnx

    from octomed_jax import sharding as sharding_lib
    from octomed_jax.data.global_batch import to_global_micro_batches
    from octomed_jax.data.shards import ShardedIterator
    from octomed_jax.training.optimizer import make_optimizer
    from octomed_jax.training.prefetch import Prefetcher
    from octomed_jax.training.step import jit_train_step
    from octomed_jax.training.trainer import build_model, run_contract

    mesh = sharding_lib.make_mesh(dict(cfg.mesh))
    rules = tuple(tuple(r) for r in cfg.rules)
    contract, _ = run_contract(cfg, mesh, workdir)
    model = build_model(cfg, contract, mesh, rules)
    optimizer = nnx.Optimizer(model, make_optimizer(contract.optim, contract.train.total_steps)[0], wrt=nnx.Param)
    sharding_lib.place_unsharded(optimizer, mesh)

    def inputs(depth: int) -> Prefetcher:
        data = ShardedIterator(contract.data, contract.model, 1, 0, 1)
        place = lambda host: to_global_micro_batches(host, mesh, rules)  # noqa: E731
        return Prefetcher(data, place, contract.train.micro_steps, steps + 1, depth=depth)

    prepared = inputs(0)
    batch = next(prepared).batch
    step_fn = jit_train_step(contract.train.loss, model, optimizer)
    out: dict[str, float] = {}
    with jax.set_mesh(mesh):
        jax.block_until_ready(step_fn(model, optimizer, batch))  # compile
        t0 = time.perf_counter()
        for _ in range(steps):
            jax.block_until_ready(next(prepared).batch)
        out["prepare"] = (time.perf_counter() - t0) / steps
        for name, background in (("alone", None), ("alongside", inputs(1))):
            t0 = time.perf_counter()
            for _ in range(steps):
                metrics = step_fn(model, optimizer, batch)
                if background is not None:  # its thread prepares the next steps while this one runs
                    next(background)
            jax.block_until_ready(metrics)
            out[name] = (time.perf_counter() - t0) / steps
            if background is not None:
                background.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20, help="timed steps (the loop runs twice as many)")
    p.add_argument("--prefetch", type=int, nargs="+", default=[2], help="prefetch depths of the loop runs")
    p.add_argument("--devices", type=int, default=1, help="CPU devices (batch-parallel mesh over them)")
    args = p.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    import dataset
    import tiny_config

    root = tempfile.mkdtemp(prefix="bench_loop_")
    cfg = tiny_config.get_config()
    cfg.data.data_dir = dataset.build(os.path.join(root, "data"))
    cfg.mesh.update(data=1, fsdp=-1, tensor=1)
    cfg.data.rows_per_host = 4  # 2 micro-batches of 4 rows per step, as the tests' 8-device mesh
    # The final save only, after the timed steps: the tiny data's epochs end every few steps, and a save at each
    # end (full_mix's `at_epoch_ends`, for the traces ablation's epoch points) is checkpoint time, not the loop's.
    cfg.checkpoint.update(every=10_000, at_epoch_ends=False)
    cfg.export.hf = False
    ref = step_time(cfg, os.path.join(root, "alone"), args.steps)
    alone, alongside = ref["alone"], ref["alongside"]
    import jax

    devices = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    print(f"compiled step alone: {1e3 * alone:.1f} ms/step ({devices}, {args.steps} steps)")
    print(f"input path alone (read, pack, place): {1e3 * ref['prepare']:.1f} ms/step")
    print(
        f"compiled step with the input path in a background thread: {1e3 * alongside:.1f} ms/step "
        f"({alongside / alone:.3f} x alone: the input work's share of these cores)"
    )
    for depth in args.prefetch:
        per_step, wait = loop_time(cfg, os.path.join(root, f"loop_prefetch{depth}"), args.steps, depth)
        ratio = per_step / alone
        print(
            f"loop, prefetch={depth}: {1e3 * per_step:.1f} ms/step, input wait {1e3 * wait:.2f} ms/step, "
            f"loop / step = {ratio:.3f} ({'within' if ratio <= GOAL else 'over'} the {GOAL:.2f} goal), "
            f"loop / (step with the input path alongside) = {per_step / alongside:.3f}"
        )


if __name__ == "__main__":
    main()
