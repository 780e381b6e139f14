"""Measured MFU of the training step on one device: the 7B-wide model cut to as many layers as fit.

  python benchmarks/bench_mfu.py                       # GPU: 7B width, bf16, 8192-token packed rows, flash path
  python benchmarks/bench_mfu.py --layers=12 --rows=2  # a fixed depth and rows per step
  python benchmarks/bench_mfu.py --smoke               # CPU: a tiny shape, to check the script runs

The step is the trainer's (`training.step.train_step`: bf16 compute, fp32 parameters, AdamW, the chunked
loss, remat per `--remat`), text only, on packed rows of `--example_tokens`-long examples (segment ids), with
`model.attention_impl=--impl` ("auto": the Triton flash kernel with segment ids on GPU, splash on TPU). With
`--layers=-1` the depth is the largest whose compiled step (`memory_analysis`) fits `--hbm_fraction` of the
device's memory. Prints tokens/s, MFU (`metrics.train_flops` over the measured step time at the device's bf16
peak; attention counted within each packed example, the work a packed row holds, and beside it over the whole
row, the convention of unpacked rows) and the peak memory (the device's `peak_bytes_in_use`, else the
compiler's figure).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from octomed_jax.data.global_batch import abstract_train_batch
from octomed_jax.models import attention
from octomed_jax.models.config import ModelConfig, get_preset
from octomed_jax.models.families import abstract_model, init_model
from octomed_jax.training.metrics import device_peak_flops, train_flops
from octomed_jax.training.optimizer import OptimConfig, make_optimizer
from octomed_jax.training.step import LossConfig, train_step

SMOKE = dict(preset="tiny", seq=256, example_tokens=60, layers=2, rows=2, steps=2, loss_chunk=128)


def model_config(args: argparse.Namespace, layers: int) -> ModelConfig:
    """The preset's widths, `layers` decoder layers, scanned, with the step's dtype, remat and kernel."""
    cfg = get_preset(args.preset, dtype="bfloat16", param_dtype="float32", scan_layers=True,
                     remat_policy=args.remat, attention_impl=args.impl, attention_block_q=args.block,
                     attention_block_kv=args.block)
    return cfg.replace(text=dataclasses.replace(cfg.text, num_hidden_layers=layers))


def make_batch(args: argparse.Namespace) -> Any:
    """One micro-batch of packed rows: examples of `example_tokens` (segments 1, 2, ...), padding at the end."""
    rows, seq = args.rows, args.seq
    rng = np.random.default_rng(0)
    pos = np.arange(seq)
    segment = pos // args.example_tokens + 1
    segment[seq - seq % args.example_tokens:] = 0  # the tail too short for an example is padding
    positions = np.where(segment > 0, pos % args.example_tokens, 0)
    arrays = {
        "input_ids": rng.integers(10, 150_000, (rows, seq)),
        "targets": rng.integers(10, 150_000, (rows, seq)),
        "loss_mask": np.broadcast_to(segment > 0, (rows, seq)).astype(np.float32),
        "segment_ids": np.broadcast_to(segment, (rows, seq)),
        "positions": np.broadcast_to(positions, (3, rows, seq)),
    }
    abstract = abstract_train_batch(rows, seq, 0)
    return jax.tree.map(lambda s, name: jnp.asarray(arrays[name], s.dtype)[None],  # one micro-batch
                        abstract, _field_names(abstract))


def _field_names(batch: Any) -> Any:
    """The batch's tree with each leaf replaced by its field name (the keys of `make_batch`'s arrays)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: str(path[-1].name), batch)


def compile_for(args: argparse.Namespace, layers: int, batch: Any) -> tuple[Any, Any, Any, int]:
    """(compiled step, graphdef, optimizer transformation, compiler peak bytes) for `layers`; nothing allocated."""
    cfg = model_config(args, layers)
    tx, _ = make_optimizer(OptimConfig(), total_steps=1000)
    loss_cfg = LossConfig(chunk=args.loss_chunk)
    model = abstract_model(cfg)
    with nnx.use_eager_sharding(False):
        optimizer = nnx.eval_shape(lambda m: nnx.Optimizer(m, tx, wrt=nnx.Param), model)
    graphdef, state = nnx.split((model, optimizer))

    def step(state: Any, batch: Any) -> tuple[Any, Any]:
        model, optimizer = nnx.merge(graphdef, state)
        metrics = train_step(model, optimizer, batch, loss_cfg)
        return nnx.state((model, optimizer)), metrics

    compiled = jax.jit(step, donate_argnums=0).lower(state, batch).compile()
    m = compiled.memory_analysis()
    peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    return compiled, graphdef, tx, peak


def fit_layers(args: argparse.Namespace, batch: Any) -> tuple[int, Any, Any, Any, int]:
    """The most layers (at most the preset's) whose compiled step fits; (layers, compiled, graphdef, tx, peak)."""
    limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    if limit is None:
        raise SystemExit("bench_mfu: --layers=-1 needs a device that reports its memory (a GPU or TPU); "
                         "give --layers=N")
    budget = args.hbm_fraction * limit
    one, two = (compile_for(args, n, batch)[3] for n in (1, 2))  # bytes per layer, by difference
    layers = min(get_preset(args.preset).text.num_hidden_layers, max(1, int((budget - one) // (two - one)) + 1))
    while layers >= 1:
        compiled, graphdef, tx, peak = compile_for(args, layers, batch)
        print(f"  {layers} layers: compiler peak {peak / 1e9:.1f} GB of {budget / 1e9:.1f} GB", flush=True)
        if peak <= budget:
            return layers, compiled, graphdef, tx, peak
        layers -= 1
    raise SystemExit(f"bench_mfu: not even 1 layer fits {budget / 1e9:.1f} GB; lower --rows or --seq")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="7b")
    p.add_argument("--layers", type=int, default=-1, help="decoder layers; -1: as many as fit")
    p.add_argument("--rows", type=int, default=1, help="8192-token rows per step")
    p.add_argument("--seq", type=int, default=8192)
    p.add_argument("--example_tokens", type=int, default=1100, help="tokens per packed example (segment)")
    p.add_argument("--impl", default="auto", help="model.attention_impl")
    p.add_argument("--block", type=int, default=512,
                   help="model.attention_block_q/kv (splash's tiles; pallas_gpu caps them at 128)")
    p.add_argument("--remat", default="nothing_saveable")
    p.add_argument("--loss_chunk", type=int, default=1024)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--hbm_fraction", type=float, default=0.9)
    p.add_argument("--smoke", action="store_true", help="a tiny shape (CPU smoke test)")
    args = p.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)

    batch = make_batch(args)
    if args.layers == -1:
        layers, compiled, graphdef, tx, compiler_peak = fit_layers(args, batch)
    else:
        layers = args.layers
        compiled, graphdef, tx, compiler_peak = compile_for(args, layers, batch)
    cfg = model_config(args, layers)
    model = init_model(cfg)
    with nnx.use_eager_sharding(False):  # as compiled: the optimizer's pytree metadata must match
        state = nnx.state((model, nnx.Optimizer(model, tx, wrt=nnx.Param)))
    del model

    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics.loss)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics.loss)
    step_s = (time.perf_counter() - t0) / args.steps

    device = jax.devices()[0]
    tokens = args.rows * args.seq
    flops = train_flops(cfg, tokens, 0, args.example_tokens)  # causal attention within each example
    row_flops = train_flops(cfg, tokens, 0, args.seq)
    peak_flops = device_peak_flops(device)
    stats = device.memory_stats() or {}
    peak_bytes, peak_from = stats.get("peak_bytes_in_use", compiler_peak), "device" if stats else "compiler"
    print(f"device: {device.device_kind}; model: {args.preset} width {cfg.text.hidden_size}, {layers} of "
          f"{get_preset(args.preset).text.num_hidden_layers} layers, remat {args.remat}, attention "
          f"{attention.resolve_impl(args.impl, on=device.platform)} (tiles {args.block}); {args.rows} x {args.seq} "
          f"tokens, examples of {args.example_tokens}; loss {float(metrics.loss):.3f}")
    mfu = (f"{flops / step_s / peak_flops:.1%} (whole-row attention: {row_flops / step_s / peak_flops:.1%})"
           if peak_flops else "- (no bf16 peak known for this device)")
    print(f"step {step_s * 1e3:.1f} ms  tokens/s {tokens / step_s:,.0f}  model TFLOP/step {flops / 1e12:.3f}  "
          f"MFU {mfu}")
    print(f"peak memory {peak_bytes / 1e9:.2f} GB ({peak_from})")


if __name__ == "__main__":
    main()
