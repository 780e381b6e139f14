"""The training loop: mesh, model, optimizer, data, checkpoints, metrics, in-process eval, HF export.

`train(config, workdir)` is what `python -m octomed_jax.train` runs. A restarted run resumes from the
latest checkpoint in `workdir` (model, optimizer, step, RNG and data position), so the losses after a
restart equal those of a run never interrupted. SIGTERM (preemption) saves a checkpoint and exits.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from absl import logging
from flax import nnx
from tqdm import tqdm

from data_pipeline.writer import write_json
from octomed_jax import sharding as sharding_lib
from octomed_jax.checkpoint import load_contract
from octomed_jax.contract import RunContract
from octomed_jax.data import built_sources
from octomed_jax.data.epochs import DataPlan, count_plan
from octomed_jax.data.global_batch import to_global_micro_batches
from octomed_jax.data.shards import ShardedIterator
from octomed_jax.models.families import model_class
from octomed_jax.models.qwen2_5_vl import Qwen25VL
from octomed_jax.training import checkpointing
from octomed_jax.training.metrics import MetricsWriter, device_peak_flops, train_flops
from octomed_jax.training.optimizer import make_optimizer
from octomed_jax.training.prefetch import Prefetcher
from octomed_jax.training.step import StepMetrics, jit_train_step

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


def run_contract(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, workdir: str | None = None
) -> tuple[RunContract, DataPlan]:
    """The run's contract: the config resolved against the data on disk and the mesh (see `octomed_jax.contract`),
    and the counted data plan its length comes from (`train.num_steps=-1`: the counted steps of
    `data.epochs` exact epochs; see `octomed_jax.data.epochs`)."""
    data_dir = resolve_data_dir(config)
    rows_per_host, micro_steps = batch_geometry(config, mesh)
    sources = dict(config.data.sources) if config.data.sources else built_sources(data_dir)
    resolved = dict(data_dir=data_dir, sources=sources, rows_per_host=rows_per_host, micro_steps=micro_steps,
                    process_count=jax.process_count(), mesh_shape=dict(mesh.shape))
    data = RunContract.from_config(config, **resolved)
    num_shards, rows_per_shard = data_shards(config, rows_per_host)
    fixed = config.train.num_steps if config.train.num_steps > 0 else None
    plan = _count_plan(data, num_shards, rows_per_shard, micro_steps, fixed, workdir)
    steps = fixed or plan.steps
    contract = RunContract.from_config(
        config, **resolved, total_steps=steps, epoch_end_steps=tuple(e for e in plan.epoch_end_steps if e <= steps)
    )
    return contract, plan


def data_shards(config: ml_collections.ConfigDict, rows_per_host: int) -> tuple[int, int]:
    """(data shards of the run, rows of one shard per micro-batch)."""
    n = config.data.num_shards if config.data.num_shards > 0 else jax.process_count()
    if n % jax.process_count():
        raise SetupError(f"data.num_shards={n} does not split over {jax.process_count()} processes")
    per_process = n // jax.process_count()
    if rows_per_host % per_process:
        raise SetupError(f"{rows_per_host} rows per host do not split over its {per_process} data shards "
                         "(data.num_shards)")
    return n, rows_per_host // per_process


def _count_plan(contract: RunContract, num_shards: int, rows_per_shard: int, micro_steps: int,
                max_steps: int | None, workdir: str | None) -> DataPlan:
    """`count_plan`, done by process 0 first; the other processes then read its cache."""
    def count() -> DataPlan:
        return count_plan(contract.data, contract.model, num_shards=num_shards, rows_per_micro_batch=rows_per_shard,
                          micro_steps=micro_steps, max_steps=max_steps, workdir=workdir,
                          progress=jax.process_index() == 0)

    if jax.process_count() == 1:
        return count()
    from jax.experimental import multihost_utils

    plan = count() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("octomed data plan counted")
    return plan or count()


def log_mixture(plan: DataPlan) -> None:
    """The realised mixture of the run, per source and per kind (image-text / text)."""
    mix = plan.mixture
    for source, m in mix["sources"].items():
        logging.info("mixture %s: weight %g, %d examples, %d tokens, %d patches over %d epochs", source, m["weight"],
                     m["examples"], m["tokens"], m["patches"], mix["epochs"])
    for kind, m in mix["categories"].items():
        logging.info("mixture %s: %d examples (%.2f%%), %d tokens (%.2f%%)", kind, m["examples"],
                     100 * m["example_share"], m["tokens"], 100 * m["token_share"])


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
    elif not any(os.path.exists(os.path.join(data_dir, f)) for f in ("manifest.json", "dataset_info.json")):
        problems.append(
            f"no accepted traces at {data_dir} (manifest.json missing): build them with "
            f"`python -m data_pipeline.build --config={config.recipe.name} --out={data_dir}` "
            "or set --config.data.data_dir (a build folder, or a TFDS dataset folder of one: its dataset_info.json)"
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
                        scan_layers=m.scan_layers, remat_policy=m.remat_policy, attention_impl=m.attention_impl,
                        attention_block_q=m.attention_block_q, attention_block_kv=m.attention_block_kv)
        if (model.cfg.family, model.cfg.text, model.cfg.vision) != (m.family, m.text, m.vision):
            raise SetupError(
                f"init_from {config.init_from}: its config.json describes another model ({model.cfg.family}) than "
                f"model.preset={config.model.preset!r} (model.family={m.family!r}); set --config.model.preset "
                "and --config.model.family to match the checkpoint"
            )
        return model
    return sharding_lib.create_model(lambda: model_class(m)(m, rngs=nnx.Rngs(contract.train.seed)), mesh, rules)


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
                                max_batch=e.get("max_batch", 32), progress=jax.process_index() == 0)
        flat = flatten_eval_metrics(result.metrics)
        logging.info("eval at step %d: %s", step, {k: v for k, v in flat.items() if k.startswith("accuracy/")})
        return flat

    return evaluate


@dataclasses.dataclass(frozen=True)
class _Trained:
    """A step dispatched but not read back yet: its metrics stay on the device until the next sync."""

    step: int
    metrics: StepMetrics
    data_position: dict[str, Any]  # the data iterator's state after the step's batches
    patches: int  # real image patches of this process's batches
    log: bool  # a log step: its scalars are written
    epoch: int | None  # the epoch that ended at this step


class _StepLog:
    """Training metrics read back from the devices at sync points only (log, checkpoint and eval steps).

    Between syncs the step's metrics stay on the devices, so the host never waits on a step it does not
    need yet. A sync fetches every pending step at once, stops at the first non-finite loss or gradient norm
    (naming that step and its data position), and writes the log steps among them with the wall time and
    input wait per step averaged over the steps since the previous sync.
    """

    def __init__(self, config: ml_collections.ConfigDict, contract: RunContract, schedule: Callable[[int], Any],
                 writer: MetricsWriter, progress: tqdm):
        # Compiled once: called eagerly, the schedule's dozen jnp ops cost ~14 ms of host time per logged step.
        self._config, self._contract, self._schedule = config, contract, jax.jit(schedule)
        self._writer, self._progress = writer, progress
        self._peak = device_peak_flops()
        self._pending: list[_Trained] = []
        self._since, self._wait_mark = time.perf_counter(), 0.0
        self.losses: dict[int, float] = {}
        self.tokens_trained = 0.0

    def add(self, trained: _Trained) -> None:
        self._pending.append(trained)
        self._progress.update(1)

    def sync(self, input_wait: float, *, keep_latest: bool = False) -> None:
        """Reads back the pending steps (one transfer) and writes their log steps.

        Args:
          input_wait: the prefetcher's total input wait so far (seconds).
          keep_latest: leave the step dispatched last on the devices (read at the next sync): a sync due only
            for logging then waits for the step before it, and the host prepares the next step while the
            latest one runs (logging every step otherwise cost ~12% of a small model's CPU step).

        Raises:
          NonFiniteLossError: a pending step's loss or gradient norm is not finite; the message names the
            first such step and its data position. Callers sync before every checkpoint, so none holds it.
        """
        ready = self._pending[:-1] if keep_latest else self._pending
        if not ready:
            return
        fetched = jax.device_get([t.metrics for t in ready])
        now = time.perf_counter()
        n = len(ready)
        dt, wait = (now - self._since) / n, (input_wait - self._wait_mark) / n
        for t, m in zip(ready, fetched, strict=True):
            loss, grad_norm = float(m.loss), float(m.grad_norm)
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                raise NonFiniteLossError(
                    f"loss is {loss} (gradient norm {grad_norm}) at step {t.step} (batch of data position "
                    f"{t.data_position}); seen at step {ready[-1].step}, before any checkpoint after "
                    f"step {t.step - 1}: the last checkpoint before it is intact"
                )
            self.losses[t.step] = loss
            self.tokens_trained += float(m.loss_tokens)
            if t.log:
                self._writer.write(t.step, self._scalars(t, m, dt, wait))
        self._progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{float(m.real_tokens) / dt:.0f}")
        del self._pending[:n]
        self._since, self._wait_mark = now, input_wait

    def _scalars(self, t: _Trained, m: StepMetrics, dt: float, wait: float) -> dict[str, float]:
        config, real = self._config, float(m.real_tokens)
        scalars = {
            "loss": float(m.loss),
            "learning_rate": float(self._schedule(t.step - 1)),
            "grad_norm": float(m.grad_norm),
            "loss_tokens": float(m.loss_tokens),
            "tokens_per_second": real / dt,
            "packing_efficiency": real / (config.train.global_batch_rows * config.data.seq_len),
            "step_time": dt,  # wall time per step since the previous sync
            "input_wait": wait,  # of which the loop waited for its input
            "dropped_loss_tokens": int(m.dropped_loss_tokens),
        }
        if self._peak:
            flops = train_flops(self._contract.model, real, t.patches * jax.process_count(), config.data.seq_len)
            scalars["mfu"] = flops / dt / (self._peak * jax.device_count())
        if t.epoch is not None:
            scalars["epoch"] = float(t.epoch)
        return scalars


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    evaluate_fn: Callable[[Qwen25VL, int], dict[str, float]] | None = None,
    prefetch: int = 2,
) -> dict[str, Any]:
    """Trains as `config` says, checkpointing into `workdir`; returns a summary of the run.

    Args:
      config: a config from `configs/` (`recipe`, `model`, `mesh`, `data`, `optim`, `train`, ...).
      workdir: checkpoints, metrics.jsonl, tensorboard/ and the final `hf/` export go here.
      evaluate_fn: in-process evaluation, called as `evaluate_fn(model, step)` every `eval.every` steps and
        at the end; its metrics are logged with the training metrics. Default: `make_benchmark_eval`.
      prefetch: steps whose input is read, packed and placed on the devices ahead of the one training, in a
        background thread (`octomed_jax.training.prefetch`); 0 prepares each step in this thread.
    """
    maybe_initialize_distributed()
    check_inputs(config)
    mesh = sharding_lib.make_mesh(dict(config.mesh))
    rules = tuple(tuple(r) for r in config.rules)
    contract, plan = run_contract(config, mesh, workdir)  # built once; saved with every step
    tr = contract.train
    logging.info("mesh %s, %d rows/host x %d micro-batches, %d steps (%s), epochs end at steps %s",
                 dict(mesh.shape), contract.data.batch_size, tr.micro_steps, tr.total_steps,
                 "counted" if config.train.num_steps <= 0 else "train.num_steps", list(tr.epoch_end_steps))
    log_mixture(plan)
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, "data_plan.json"), {**plan.to_dict(), "total_steps": tr.total_steps})

    model = build_model(config, contract, mesh, rules)
    tx, schedule = make_optimizer(contract.optim, tr.total_steps)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)  # moments created like (and sharded as) the params
    sharding_lib.place_unsharded(optimizer, mesh)
    num_shards, _ = data_shards(config, contract.data.batch_size)
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

    step_fn = jit_train_step(tr.loss, model, optimizer)
    if evaluate_fn is None:
        evaluate_fn = make_benchmark_eval(config, contract, mesh, rules)
    writer = MetricsWriter(workdir)
    preemption = Preemption()
    preemption.install()
    summary: dict[str, Any] = {"start_step": start, "losses": {}, "eval": {}}
    if evaluate_fn is not None and start == 0 and config.eval.at_start:
        summary["eval"][0] = _evaluate(evaluate_fn, model, 0, writer)

    epochs_ending: collections.defaultdict[int, list[int]] = collections.defaultdict(list)
    for epoch, end in enumerate(tr.epoch_end_steps, start=1):
        epochs_ending[end].append(epoch)
    last_step = min(tr.total_steps, plan.steps) if plan.complete else tr.total_steps  # the data's counted end
    inputs = Prefetcher(data_iter, lambda host: to_global_micro_batches(host, mesh, rules), tr.micro_steps,
                        steps=max(0, last_step - start), depth=prefetch)
    progress = tqdm(total=tr.total_steps, initial=start, desc="train", disable=jax.process_index() != 0,
                    dynamic_ncols=True)
    log = _StepLog(config, contract, schedule, writer, progress)
    step = start
    last_data_step = start  # the last step that read data on this process

    def checkpoint(force: bool = False) -> bool:
        """Saves `step` if due (or `force`), syncing first: no checkpoint holds a non-finite state. The data
        position saved is that of the batches trained (`inputs.get_state`), not of those prepared ahead."""
        if force or manager.should_save(step):
            log.sync(inputs.wait_seconds)
        return checkpointing.save(manager, step, model, optimizer, rng, inputs, contract, force=force)

    try:
        for step_input in inputs:
            with jax.set_mesh(mesh):
                metrics = step_fn(model, optimizer, step_input.batch)
            step += 1
            if step_input.read_data:
                last_data_step = step
            ended = epochs_ending.get(step, [])
            trained = _Trained(step, metrics, step_input.state, step_input.patches,
                               log=step % config.train.log_every == 0 or step == tr.total_steps or bool(ended),
                               epoch=ended[-1] if ended else None)
            log.add(trained)
            eval_due = evaluate_fn is not None and (
                (ended and config.eval.at_epoch_ends) or (config.eval.every > 0 and step % config.eval.every == 0))
            preempted = preemption.requested
            if eval_due or preempted or step == last_step:
                log.sync(inputs.wait_seconds)
            elif trained.log:
                log.sync(inputs.wait_seconds, keep_latest=True)
            saved = checkpoint()
            if ended:
                for epoch in ended:
                    logging.info("epoch %d ended at step %d", epoch, step)
                if not saved and config.checkpoint.at_epoch_ends:
                    checkpoint(force=True)
                if evaluate_fn is not None and config.eval.at_epoch_ends:
                    summary["eval"][step] = _evaluate(evaluate_fn, model, step, writer)
            if (evaluate_fn is not None and config.eval.every > 0 and step % config.eval.every == 0
                    and step not in summary["eval"]):
                summary["eval"][step] = _evaluate(evaluate_fn, model, step, writer)
            if preempted:
                logging.warning("SIGTERM: saving step %d and exiting", step)
                if manager.latest_step() != step:
                    checkpoint(force=True)
                manager.wait_until_finished()
                summary.update(preempted=True, losses=log.losses)
                return summary
    finally:
        inputs.close()
        progress.close()
    log.sync(inputs.wait_seconds)  # a step kept on the devices by the last logging sync (the data ran out early)
    if step < tr.total_steps:
        logging.info("data exhausted after %d steps (the counted end of %d epochs)", step, config.data.epochs)
    if manager.latest_step() != step:
        checkpoint(force=True)
    manager.wait_until_finished()
    if config.train.num_steps <= 0:
        _check_counted_end(plan, data_iter, last_data_step, step)
    if evaluate_fn is not None and step not in summary["eval"]:
        summary["eval"][step] = _evaluate(evaluate_fn, model, step, writer)
    if config.export.hf:
        from octomed_jax.hf.export import export_for_serving

        export_for_serving(model, contract, os.path.join(workdir, "hf"), dtype=config.export.dtype or None)
    writer.close()
    summary.update(end_step=step, losses=log.losses, tokens_trained=log.tokens_trained, data=data_iter.counts(),
                   input_wait=inputs.wait_seconds)
    return summary


def _check_counted_end(plan: DataPlan, data_iter: ShardedIterator, last_data_step: int, step: int) -> None:
    """Warns when this process's data did not run out exactly at the step the counting pass predicted."""
    counted = plan.steps_of(data_iter.shards)
    try:
        next(data_iter)
        left = True
    except StopIteration:
        left = False
    if left or last_data_step != counted:
        logging.warning(
            "the data %s at step %d, the counting pass said step %d (data shards %s): the counted plan does not "
            "match this data; delete the epoch_counts folder (beside the shards or in the workdir) to count again",
            "was left" if left else "ran out", step if left else last_data_step, counted, data_iter.shards,
        )


def _evaluate(evaluate_fn: Callable[[Qwen25VL, int], dict[str, float]], model: Qwen25VL, step: int,
              writer: MetricsWriter) -> dict[str, float]:
    metrics = evaluate_fn(model, step)
    writer.write(step, metrics, prefix="eval")
    return metrics


__all__ = ["NonFiniteLossError", "SetupError", "train"]
