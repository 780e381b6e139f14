"""The training loop: mesh, model, optimizer, data, checkpoints, metrics, in-process eval, HF export.

`train(config, workdir)` is what `python -m octomed_jax.train` runs. A restarted run resumes from the
latest checkpoint in `workdir` (model, optimizer, step, RNG and data position), so the losses after a
restart equal those of a run never interrupted. SIGTERM (preemption) saves a checkpoint and exits.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from flax import nnx
from tqdm import tqdm

from data_pipeline.writer import MANIFEST, read_json
from octomed_jax import sharding as sharding_lib
from octomed_jax.checkpoint import load_contract
from octomed_jax.contract import RunContract
from octomed_jax.data import natural_weights, to_global_batch
from octomed_jax.data.shards import ShardedIterator
from octomed_jax.models.qwen2_5_vl import Qwen25VL
from octomed_jax.training import checkpointing
from octomed_jax.training.metrics import MetricsWriter, device_peak_flops, train_flops
from octomed_jax.training.optimizer import make_optimizer
from octomed_jax.training.step import jit_train_step

DEMO_HINT = (
    "To see the whole pipeline run on this machine with nothing to download: python -m octomed_demo"
)


class SetupError(ValueError):
    """The config points at something that is not there (data, weights); the message says what to provide."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the batch."""


def maybe_initialize_distributed() -> None:
    """Multi-host: `jax.distributed.initialize` from the launcher's environment (SLURM, TPU, explicit)."""
    # Must run before anything touches the XLA backend (even jax.process_count()).
    if jax.distributed.is_initialized():
        return
    coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if coordinator:
        jax.distributed.initialize(
            coordinator,
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()
    elif os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
        jax.distributed.initialize()


def run_contract(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> RunContract:
    """The run's contract: the config resolved against the data on disk and the mesh (see `octomed_jax.contract`)."""
    data_dir = resolve_data_dir(config)
    rows_per_host, micro_steps = batch_geometry(config, mesh)
    sources = dict(config.data.sources) if config.data.sources else _built_sources(data_dir)
    return RunContract.from_config(
        config, data_dir=data_dir, sources=sources, rows_per_host=rows_per_host, micro_steps=micro_steps,
        process_count=jax.process_count(), total_steps=estimate_steps(config, data_dir), mesh_shape=dict(mesh.shape),
    )


def _built_sources(data_dir: str) -> dict[str, float]:
    """Every source the build wrote, weighted by its record count (each record seen once per epoch)."""
    files = read_json(os.path.join(data_dir, MANIFEST), "manifest")["files"]
    names = [s for s, entries in files.items() if sum(e["records"] for e in entries) > 0]
    if not names:
        raise SetupError(f"{data_dir}/manifest.json lists no source with accepted traces")
    return natural_weights(data_dir, names)


def resolve_data_dir(config: ml_collections.ConfigDict) -> str:
    return config.data.data_dir or config.recipe.out_dir


def check_inputs(config: ml_collections.ConfigDict) -> None:
    """Fails at once, saying what to provide, when the data or the initial weights are missing."""
    data_dir = resolve_data_dir(config)
    problems = []
    if not data_dir:
        problems.append(
            f"recipe {config.recipe.name!r} names no data folder (data.data_dir and recipe.out_dir are empty): build "
            f"with `python -m data_pipeline.build --config={config.recipe.name} --out=DIR` and pass "
            "--config.data.data_dir=DIR"
        )
    elif not os.path.exists(os.path.join(data_dir, "manifest.json")):
        problems.append(
            f"no accepted traces at {data_dir} (manifest.json missing): build them with "
            f"`python -m data_pipeline.build --config={config.recipe.name} --out={data_dir}` "
            "or set --config.data.data_dir"
        )
    if config.init_from and not os.path.exists(os.path.join(config.init_from, "config.json")):
        problems.append(
            f"no Hugging Face checkpoint at {config.init_from}: put Qwen2.5-VL-7B-Instruct there "
            "(config.json + safetensors) or set --config.init_from=PATH ('' trains from random weights)"
        )
    if problems:
        raise SetupError("cannot start training:\n  - " + "\n  - ".join(problems) + "\n" + DEMO_HINT)


def batch_geometry(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> tuple[int, int]:
    """(rows per host per micro-batch, micro-batches per step) reaching `train.global_batch_rows`."""
    batch_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    rows_per_host = config.data.rows_per_host
    if rows_per_host <= 0:  # one row per batch-parallel device of this host
        rows_per_host = max(1, batch_ways // jax.process_count())
    rows_per_micro = rows_per_host * jax.process_count()
    if rows_per_micro % batch_ways:
        raise SetupError(f"{rows_per_micro} rows per micro-batch do not split over {batch_ways} batch-parallel devices")
    target = config.train.global_batch_rows
    if target % rows_per_micro:
        raise SetupError(
            f"train.global_batch_rows={target} is not a multiple of the {rows_per_micro} rows per micro-batch"
        )
    return rows_per_host, target // rows_per_micro


def estimate_steps(config: ml_collections.ConfigDict, data_dir: str) -> int:
    """Optimizer steps for the configured epochs, from the manifest's token counts (for the LR schedule)."""
    if config.train.num_steps > 0:
        return config.train.num_steps
    manifest = read_json(os.path.join(data_dir, MANIFEST), "manifest")
    totals = manifest["totals"]
    tokens = totals["response_tokens"] + totals["traces_kept"] * config.train.prompt_tokens_estimate
    per_step = config.train.global_batch_rows * config.data.seq_len * 0.97
    return max(1, math.ceil(config.data.epochs * tokens / per_step))


def check_resumable(contract: RunContract, step_dir: str) -> None:
    """Refuses to resume a checkpoint written under another contract (architecture, data, prompting, ...)."""
    try:
        saved = load_contract(step_dir)
    except ValueError as e:
        raise SetupError(f"cannot resume from {step_dir}: {e}") from e
    changed = saved.incompatibilities(contract)
    if changed:
        raise SetupError(
            f"cannot resume from {step_dir}: the config changed what this run means:\n    "
            + "\n    ".join(changed)
            + "\n  use another --workdir for the new settings, or restore the old ones"
        )


@dataclasses.dataclass
class Preemption:
    """Set by SIGTERM; the loop saves and exits at the next step boundary."""

    requested: bool = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "requested", True))


def build_model(config: ml_collections.ConfigDict, contract: RunContract, mesh: jax.sharding.Mesh,
                rules: sharding_lib.Rules) -> Qwen25VL:
    """The student: `config.init_from` (an HF folder) if set, else random weights seeded by `train.seed`."""
    m = contract.model
    if config.init_from:
        from octomed_jax.hf import load_hf

        model = load_hf(config.init_from, dtype=m.param_dtype, compute_dtype=m.dtype, mesh=mesh, rules=rules,
                        scan_layers=m.scan_layers, remat_policy=m.remat_policy, attention_impl=m.attention_impl)
        if (model.cfg.text, model.cfg.vision) != (m.text, m.vision):
            raise SetupError(
                f"init_from {config.init_from}: its config.json describes another model than "
                f"model.preset={config.model.preset!r}; set --config.model.preset to match the checkpoint"
            )
        return model
    return sharding_lib.create_model(lambda: Qwen25VL(m, rngs=nnx.Rngs(contract.train.seed)), mesh, rules)


def flatten_eval_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """`evaluate_model` metrics -> flat scalars for the metrics log (accuracy per benchmark and category)."""
    out = {"accuracy/overall": metrics["summary"]["overall"]}
    for category, m in metrics["summary"]["categories"].items():
        out[f"accuracy/{category}"] = m["accuracy"]
    for name, m in metrics["benchmarks"].items():
        out[f"accuracy/{name}"] = m["accuracy"]
        out[f"response_tokens/{name}"] = m["mean_response_tokens"]
        out[f"unparseable/{name}"] = m["unparseable"]
    return out


def make_benchmark_eval(
    config: ml_collections.ConfigDict, contract: RunContract, mesh: jax.sharding.Mesh, rules: sharding_lib.Rules
) -> Callable[[Qwen25VL, int], dict[str, float]] | None:
    """The in-process eval: held-out subsets of `eval.benchmarks` under `eval.data_dir`, greedy by default.

    Questions are prompted and images preprocessed as the run's contract says, as `evaluate` does on a step.

    Returns None (no eval, with a warning) when no benchmark data is configured or found: training does
    not depend on it.
    """
    from octomed_jax.evaluation import benchmarks as bench_lib
    from octomed_jax.evaluation.run import evaluate_model
    from octomed_jax.generation import SamplingParams

    e = config.eval
    if not e.data_dir or not e.benchmarks:
        logging.warning("no in-process eval: set --config.eval.data_dir and --config.eval.benchmarks")
        return None
    questions = []
    for bench in bench_lib.select(e.benchmarks):
        try:
            qs, _ = bench.load(e.data_dir, limit=e.max_questions)
        except FileNotFoundError as err:
            logging.warning("eval benchmark %s skipped: %s", bench.name, err)
            continue
        questions.extend(qs)
    if not questions:
        logging.warning("no in-process eval: no benchmark questions found under %s", e.data_dir)
        return None
    params = SamplingParams(temperature=e.temperature, top_p=e.top_p, max_new_tokens=e.max_new_tokens)

    def evaluate(model: Qwen25VL, step: int) -> dict[str, float]:
        result = evaluate_model(model, questions, params, mesh=mesh, rules=rules, contract=contract,
                                progress=jax.process_index() == 0)
        flat = flatten_eval_metrics(result.metrics)
        logging.info("eval at step %d: %s", step, {k: v for k, v in flat.items() if k.startswith("accuracy/")})
        return flat

    return evaluate


def stack_micro_batches(batches: list[Any]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *batches)


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    evaluate_fn: Callable[[Qwen25VL, int], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Trains as `config` says, checkpointing into `workdir`; returns a summary of the run.

    Args:
      config: a config from `configs/` (`recipe`, `model`, `mesh`, `data`, `optim`, `train`, ...).
      workdir: checkpoints, metrics.jsonl, tensorboard/ and the final `hf/` export go here.
      evaluate_fn: in-process evaluation, called as `evaluate_fn(model, step)` every `eval.every` steps and
        at the end; its metrics are logged with the training metrics. Default: `make_benchmark_eval`.
    """
    maybe_initialize_distributed()
    check_inputs(config)
    mesh = sharding_lib.make_mesh(dict(config.mesh))
    rules = tuple(tuple(r) for r in config.rules)
    contract = run_contract(config, mesh)  # built once; saved with every step
    tr = contract.train
    logging.info("mesh %s, %d rows/host x %d micro-batches, %d steps", dict(mesh.shape), contract.data.batch_size,
                 tr.micro_steps, tr.total_steps)

    model = build_model(config, contract, mesh, rules)
    tx, schedule = make_optimizer(contract.optim, tr.total_steps)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)  # moments created like (and sharded as) the params
    sharding_lib.place_unsharded(optimizer, mesh)
    num_shards = config.data.num_shards if config.data.num_shards > 0 else jax.process_count()
    data_iter = ShardedIterator(contract.data, contract.model, num_shards, jax.process_index(), jax.process_count())
    manager = checkpointing.make_manager(os.path.join(workdir, "checkpoints"), save_every=config.checkpoint.every,
                                         keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
    if manager.latest_step() is not None:
        check_resumable(contract, os.path.join(workdir, "checkpoints", str(manager.latest_step())))
    rng = jax.random.key(tr.seed)
    restored = checkpointing.restore_latest(manager, model, optimizer, rng, data_iter)
    start = 0
    if restored is not None:
        start, rng = restored
        logging.info("resumed from step %d", start)

    step_fn = jit_train_step(tr.loss)
    if evaluate_fn is None:
        evaluate_fn = make_benchmark_eval(config, contract, mesh, rules)
    writer = MetricsWriter(workdir)
    preemption = Preemption()
    preemption.install()
    peak = device_peak_flops()
    summary: dict[str, Any] = {"start_step": start, "losses": {}, "eval": {}}
    if evaluate_fn is not None and start == 0 and config.eval.at_start:
        summary["eval"][0] = _evaluate(evaluate_fn, model, 0, writer)

    step = start
    progress = tqdm(total=tr.total_steps, initial=start, desc="train", disable=jax.process_index() != 0,
                    dynamic_ncols=True)
    tokens_trained = 0.0
    try:
        while step < tr.total_steps:
            t0 = time.perf_counter()
            try:
                host_batches = [next(data_iter) for _ in range(tr.micro_steps)]
            except StopIteration:
                logging.info("data exhausted after %d steps", step)
                break
            with jax.set_mesh(mesh):
                batch = stack_micro_batches([to_global_batch(b, mesh, rules) for b in host_batches])
                metrics = step_fn(model, optimizer, batch)
            step += 1
            loss = float(metrics.loss)
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss is {loss} at step {step} (batch of data position {data_iter.get_state()}); "
                    "the last checkpoint before it is intact"
                )
            dt = time.perf_counter() - t0
            real = float(metrics.real_tokens)
            tokens_trained += float(metrics.loss_tokens)
            patches = sum(float((b["image_segment_ids"] > 0).sum()) for b in host_batches if "image_segment_ids" in b)
            flops = train_flops(contract.model, real, patches * jax.process_count(), config.data.seq_len)
            scalars = {
                "loss": loss,
                "learning_rate": float(schedule(step - 1)),
                "grad_norm": float(metrics.grad_norm),
                "loss_tokens": float(metrics.loss_tokens),
                "tokens_per_second": real / dt,
                "packing_efficiency": real / (config.train.global_batch_rows * config.data.seq_len),
                "step_time": dt,
                "dropped_loss_tokens": int(metrics.dropped_loss_tokens),
            }
            if peak:
                scalars["mfu"] = flops / dt / (peak * jax.device_count())
            summary["losses"][step] = loss
            if step % config.train.log_every == 0 or step == tr.total_steps:
                writer.write(step, scalars)
            progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{scalars['tokens_per_second']:.0f}")
            progress.update(1)
            checkpointing.save(manager, step, model, optimizer, rng, data_iter, contract)
            if evaluate_fn is not None and config.eval.every > 0 and step % config.eval.every == 0:
                summary["eval"][step] = _evaluate(evaluate_fn, model, step, writer)
            if preemption.requested:
                logging.warning("SIGTERM: saving step %d and exiting", step)
                if manager.latest_step() != step:
                    checkpointing.save(manager, step, model, optimizer, rng, data_iter, contract, force=True)
                manager.wait_until_finished()
                summary["preempted"] = True
                return summary
    finally:
        progress.close()
    if manager.latest_step() != step:
        checkpointing.save(manager, step, model, optimizer, rng, data_iter, contract, force=True)
    manager.wait_until_finished()
    if evaluate_fn is not None and step not in summary["eval"]:
        summary["eval"][step] = _evaluate(evaluate_fn, model, step, writer)
    if config.export.hf:
        from octomed_jax.hf.export import export_for_serving

        export_for_serving(model, contract, os.path.join(workdir, "hf"), dtype=config.export.dtype or None)
    writer.close()
    summary.update(end_step=step, tokens_trained=tokens_trained, data=data_iter.counts())
    return summary


def _evaluate(evaluate_fn: Callable[[Qwen25VL, int], dict[str, float]], model: Qwen25VL, step: int,
              writer: MetricsWriter) -> dict[str, float]:
    metrics = evaluate_fn(model, step)
    writer.write(step, metrics, prefix="eval")
    return metrics


__all__ = ["NonFiniteLossError", "SetupError", "train"]
