"""Compile and memory plan: does the real train step fit a TPU pod or a GPU cluster, and what will it cost?

`plan_topology(config, name)` lowers the train step of a training config (the same `train_step`, model, mesh,
rules and batch geometry as `python -m octomed_jax.train`) with abstract inputs - no weight is allocated - for
one topology, and returns its figures; `format_table` lays them out. `python -m octomed_jax.plan` is the CLI.

- TPU (`v5p:2x2x2`, `v5p:4x4x4`, `v6e:4x4`, ...): compiled on this machine by the TPU compiler for a pod
  that is not there (`jax.experimental.topologies`, needs libtpu: `pip install -e ".[tpu]"`). Memory,
  FLOPs and the step-time estimate are the compiler's own figures (`layered_cost` for the whole step), plus
  the flash kernels' FLOPs and time, which its cost analysis cannot see (`attention_flops`).
- GPU (`gpu:N`, `h100:N`, `h200:N`, `a100:N`): compiled for N fake CPU devices, which proves that the step
  lowers and shards; memory per GPU is an estimate from the sharded parameter, optimizer and activation
  sizes (`estimate_memory`), and the step time the model FLOPs at the MFU one GPU measured
  (`MEASURED_GPU_MFU`), beside an analytic roofline of the FLOPs the step executes.

Both plan the topology's own attention kernel (`attention.resolve_impl(impl, on=platform)`), and report the
estimated MFU: model FLOPs over the estimated step time at the devices' peak.

Importing this module starts nothing; a caller that compiles for TPU topologies keeps JAX on the host
(`JAX_PLATFORMS=cpu`) and, for GPU topologies, provides `num_cpu_devices_needed` CPU devices, as the CLI does.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from octomed_jax import sharding as sharding_lib
from octomed_jax.contract import RunContract, model_config_from
from octomed_jax.data.global_batch import abstract_train_batch
from octomed_jax.models import attention, positions
from octomed_jax.models.config import ModelConfig
from octomed_jax.models.families import abstract_model
from octomed_jax.training.metrics import PEAK_FLOPS, train_flops
from octomed_jax.training.optimizer import make_optimizer
from octomed_jax.training.step import LossConfig, train_step
from octomed_jax.training.trainer import batch_geometry


def model_config_for_plan(config: ml_collections.ConfigDict) -> ModelConfig:
    """The model the plan compiles: the one `python -m octomed_jax.train` builds from the same config."""
    return model_config_from(config)


def loss_config_for_plan(config: ml_collections.ConfigDict) -> LossConfig:
    """The loss settings the plan compiles: the run contract's, as the trainer reads them."""
    return RunContract.from_config(config, total_steps=1).train.loss  # the run's length changes no shape


TPU_INSTALL_HINT = (
    'TPU topologies need libtpu, which is not in the default install: pip install -e ".[tpu]" '
    f'(or pip install "jax[tpu]=={jax.__version__}"); it installs and compiles on a CPU-only machine.'
)

# OctoMed's training set (docs/paper.md, "Training data at scale"): examples, image-text examples, mean tokens
# per example.
OCTOMED_EXAMPLES = 8_095_571
OCTOMED_IMAGE_EXAMPLES = 3_687_105
OCTOMED_MEAN_TOKENS = 1_100
PATCHES_PER_IMAGE = 1_296  # a 512x512 image smart-resized to 504x504: 36 x 36 patches of 14 px (Qwen2.5-VL)
IMAGE_SIDE = 512  # the plan counts every image at OctoMed's training size (max_pixels 262,144 = 512 x 512)
PACKING_EFFICIENCY = 0.97  # real tokens per packed row slot (as the trainer's step estimate assumes)
TARGET_MFU = 0.55
# GPU step estimates: the MFU measured on one H200 (`benchmarks/bench_mfu.py`, 2026-11-30, jax 0.11.2): the 7B
# width, 27 of 28 layers (all that fit 128 GB with fp32 AdamW), one packed 8192-token row, nothing_saveable,
# the Triton kernel: 964.8 ms per step, 39.3% of the bf16 peak with attention counted over the whole row, as
# `step_model_flops` counts it. The analytic roofline (every executed FLOP at the peak) said ~90%.
MEASURED_GPU_MFU = 0.393

GB = 1e9  # HBM sizes below are vendor figures in decimal GB

# name prefix -> (PEAK_FLOPS key, HBM bytes per device)
ACCELERATORS = {
    "v5p": ("TPU v5p", 95 * GB),
    "v5e": ("TPU v5e", 16 * GB),
    "v5litepod": ("TPU v5e", 16 * GB),
    "v6e": ("TPU v6", 32 * GB),
    "v4": ("TPU v4", 32 * GB),
    "gpu": ("H100", 80 * GB),
    "h100": ("H100", 80 * GB),
    "h200": ("H200", 141 * GB),
    "a100": ("A100", 80 * GB),
}
GPU_KINDS = ("gpu", "h100", "h200", "a100")


class PlanError(ValueError):
    """A topology or config the plan cannot handle; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Topology:
    """The devices a plan compiles for.

    Attributes:
      name: as given, e.g. "v5p:4x4x4" or "h100:8".
      platform: "tpu" (compiled by the TPU compiler) or "gpu" (compiled on fake CPU devices, memory estimated).
      devices: abstract TPU devices, or N host CPU devices standing in for GPUs.
      peak_flops: dense bf16 FLOP/s of one device (`metrics.PEAK_FLOPS`).
      hbm_bytes: memory of one device.
    """

    name: str
    platform: str
    devices: tuple[Any, ...]
    peak_flops: float
    hbm_bytes: float


def num_cpu_devices_needed(names: Sequence[str]) -> int:
    """The fake CPU devices the GPU topologies among `names` need (set before JAX starts its backend)."""
    counts = [int(n.split(":", 1)[1]) for n in names if n.split(":", 1)[0].lower() in GPU_KINDS and ":" in n]
    return max(counts, default=0)


def get_topology(name: str) -> Topology:
    """Devices, peak FLOP/s and HBM of a topology name ("v5p:2x2x2", "v6e:4x4", "gpu:8", "h100:16")."""
    kind, _, shape = name.partition(":")
    kind = kind.lower()
    if kind not in ACCELERATORS or not shape:
        raise PlanError(f"unknown topology {name!r}: use e.g. v5p:2x2x2, v5p:4x4x4, v6e:4x4, gpu:8, h100:8")
    peak_key, hbm = ACCELERATORS[kind]
    if kind in GPU_KINDS:
        n = int(shape)
        cpus = jax.devices("cpu")
        if len(cpus) < n:
            raise PlanError(
                f"{name} needs {n} fake CPU devices, JAX has {len(cpus)}: run `python -m octomed_jax.plan` "
                f"(it sets them) or set XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX starts"
            )
        return Topology(name, "gpu", tuple(cpus[:n]), PEAK_FLOPS[peak_key], hbm)
    try:
        from jax.experimental import topologies

        desc = topologies.get_topology_desc(topology_name=name, platform="tpu")
    except Exception as e:  # libtpu missing, or a topology libtpu does not know
        raise PlanError(f"cannot describe TPU topology {name}: {e}\n{TPU_INSTALL_HINT}") from e
    return Topology(name, "tpu", tuple(desc.devices), PEAK_FLOPS[peak_key], hbm)


def abstract_train_state(
    config: ml_collections.ConfigDict, model_cfg: ModelConfig, mesh: jax.sharding.Mesh, rules: sharding_lib.Rules
) -> tuple[Any, Any]:
    """(graphdef, state) of (model, optimizer) as `jax.ShapeDtypeStruct`s carrying their NamedShardings."""
    model = abstract_model(model_cfg)
    tx, _ = make_optimizer(config.optim, total_steps=1000)  # the schedule's length changes no shape
    with nnx.use_eager_sharding(False):
        optimizer = nnx.eval_shape(lambda m: nnx.Optimizer(m, tx, wrt=nnx.Param), model)
    graphdef, state = nnx.split((model, optimizer))
    shardings = sharding_lib.state_shardings(state, mesh, rules)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
    return graphdef, state


def with_micro_axis(batch: Any, micro_steps: int) -> Any:
    """A leading micro-batch axis (unsharded) on every array of an abstract batch, as the step scans over it."""

    def add(x: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
        s = NamedSharding(x.sharding.mesh, P(None, *x.sharding.spec))
        return jax.ShapeDtypeStruct((micro_steps, *x.shape), x.dtype, sharding=s)

    return jax.tree.map(add, batch)


def device_bytes(tree: Any) -> int:
    """Bytes one device holds of an abstract tree (the largest shard of each array)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += int(np.prod(shape)) * np.dtype(x.dtype).itemsize
    return total


FLASH_KERNELS = ("splash", "pallas_gpu")  # opaque to XLA's cost analysis; no quadratic buffer
# Matmuls (2 * q * k * head_dim FLOPs per query head each) a flash kernel runs per attention per training step:
# forward QK^T and PV; backward: the dk/dv kernel recomputes QK^T and runs dO V^T, P^T dO, dS^T Q, the dq kernel
# recomputes QK^T and dO V^T and runs dS K (splash and the Triton kernel alike); remat reruns the forward (the
# kernel's output is no dot, so no remat policy saves it).
_FLASH_MATMULS = {"forward": 2, "backward": 7}
# The model's count: forward 2 matmuls, backward 4.
_MODEL_MATMULS = 6


def _flash_blocks(t: int, block_q: int, block_kv: int, causal: bool) -> int:
    """Tiles of a [t, t] score matrix a flash kernel computes (causal: those touching the diagonal or below)."""
    n_q, n_kv = t // block_q, t // block_kv
    if not causal:
        return n_q * n_kv
    return sum(min(n_kv, ((i + 1) * block_q - 1) // block_kv + 1) for i in range(n_q))


def attention_flops(model_cfg: ModelConfig, seq_len: int, max_patches: int, impl: str,
                    image_patches: int = 0, image: int = PATCHES_PER_IMAGE) -> dict[str, float]:
    """Attention FLOPs of one training step per row (seq_len tokens, max_patches patch slots).

    Args:
      model_cfg: the model (its remat policy decides whether the kernels' forward pass runs twice).
      seq_len, max_patches: one row's token and patch slots.
      image_patches: the most patches of one image frame (`_image_patches`): the full-attention vision blocks
        then attend within `positions.image_bin_shape` bins rather than over the row, as the data path has it.
      image: the patches of a typical image (`patches_per_image`): what a full block's patch attends to.
      impl: the resolved kernel (`attention.resolve_impl(..., on=platform)`), never "auto".

    Returns:
      model: attention FLOPs that count as model work: text causal within the row, 6 L d s^2 (the term
        `metrics.train_flops` counts), and vision 12 d k per patch per block over the keys a patch really
        attends: `window_patches` in windowed blocks, one image (`image` patches) in full blocks.
      kernel: FLOPs the flash kernels execute, which XLA's cost analysis leaves out (0 for xla/cudnn):
        whole tiles, causal ones skipped, segments not skipped (the text layers and the vision full blocks).
      executed: all attention FLOPs the step runs; the windowed vision blocks run dense over 3 chunks of
        `window_patches` keys per query (XLA, visible to the compiler), the masked paths the whole square.
    """
    t, v = model_cfg.text, model_cfg.vision
    recompute = model_cfg.remat_policy != "none"
    flash = _FLASH_MATMULS["forward"] * (2 if recompute else 1) + _FLASH_MATMULS["backward"]
    dense = _MODEL_MATMULS + (2 if recompute else 0)  # the XLA path: forward (again under remat) and backward
    text_dim, vis_dim = t.num_attention_heads * t.head_dim, v.num_heads * v.head_dim
    full_blocks, windowed_blocks = _vision_blocks(model_cfg) if max_patches else (0, 0)

    def square(n: int, dim: int, causal: bool) -> tuple[float, float]:  # (kernel, executed) of one attention
        if impl in FLASH_KERNELS:
            bq, bkv, padded = attention._tiles(n, model_cfg, impl)
            f = flash * 2 * _flash_blocks(padded, bq, bkv, causal) * bq * bkv * dim
            return f, f
        return 0.0, dense * 2 * n * n * dim  # the masked XLA path computes every score, causal or not

    text_kernel, text_exec = square(seq_len, text_dim, causal=True)
    vis_kernel, vis_exec = 0.0, 0.0
    if max_patches:
        bins, length = positions.image_bin_shape(max_patches, image_patches) or (1, max_patches)
        vis_kernel, vis_exec = (bins * f for f in square(length, vis_dim, causal=False))
    window = v.window_patches
    image = min(image, max_patches)
    return {
        "model": (t.num_hidden_layers * _MODEL_MATMULS * seq_len * seq_len * text_dim
                  + 2 * _MODEL_MATMULS * max_patches * vis_dim * (windowed_blocks * window + full_blocks * image)),
        "kernel": t.num_hidden_layers * text_kernel + full_blocks * vis_kernel,
        "executed": (t.num_hidden_layers * text_exec + full_blocks * vis_exec
                     + windowed_blocks * dense * 2 * max_patches * 3 * window * vis_dim),
    }


def patches_per_image(model_cfg: ModelConfig, config: ml_collections.ConfigDict) -> int:
    """Patch slots one `IMAGE_SIDE`-square image takes in the family's tower at the run's image options.

    Qwen2.5-VL / Qwen3-VL: the smart resize to the patch grid under `recipe.images.max_pixels` (1,296 patches
    of 14 px; 1,024 of 16 px). InternVL: its tiles (the thumbnail included) times the patches of a tile.
    """
    from octomed_jax.data.images import MIN_PIXELS, smart_resize
    from octomed_jax.data.internvl_images import MAX_TILES, num_tiles

    v, images = model_cfg.vision, config.recipe.images
    if v.image_size:
        tiles = num_tiles(IMAGE_SIDE, IMAGE_SIDE, tile_size=v.image_size, max_tiles=images.get("max_tiles", MAX_TILES))
        return tiles * v.num_tile_patches
    h, w = smart_resize(IMAGE_SIDE, IMAGE_SIDE, v.patch_size * v.spatial_merge_size, MIN_PIXELS,
                        int(images.max_pixels))
    return (h // v.patch_size) * (w // v.patch_size)


def _image_patches(config: ml_collections.ConfigDict, model_cfg: ModelConfig) -> int:
    """The most patches of one image frame at the run's `recipe.images.max_pixels` (the data path's bin bound)."""
    return positions.max_image_patches(int(config.recipe.images.max_pixels), model_cfg.vision)


def _vision_blocks(model_cfg: ModelConfig) -> tuple[int, int]:
    """(full, windowed) vision blocks: Qwen3-VL's all attend within their image; Qwen2.5-VL's attend within
    windows but for `fullatt_block_indexes`."""
    v = model_cfg.vision
    if model_cfg.family == "qwen3_vl":
        return v.depth, 0
    return len(v.fullatt_block_indexes), v.depth - len(v.fullatt_block_indexes)


def _saved_per_token_per_layer(width: int, qkv: int, ff: int, heads: int, seq: int, policy: str) -> float:
    """Activation values one layer keeps per token for its backward pass, by remat policy (in values)."""
    layer_input = width
    dots = qkv + width + 2 * ff + width  # q/k/v, output projection, gate and up, down projection
    if policy in ("full", "nothing_saveable"):
        return layer_input
    if policy == "dots_with_no_batch_dims_saveable":
        return layer_input + dots
    if policy in ("dots_saveable", "checkpoint_dots"):
        return layer_input + dots + heads * seq  # attention scores are batched dots too
    # "none" or another policy: everything the layer computes, roughly twice its matmul outputs
    return layer_input + 2 * (dots + heads * seq)


def estimate_memory(
    model_cfg: ModelConfig, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, rows_per_device: int,
    micro_steps: int, param_bytes: int, impl: str = "xla",
) -> dict[str, float]:
    """Per-device bytes of activations and transients of one train step (an estimate, not a compiler figure).

    Saved activations: what the remat policy keeps per layer for rows_per_device x seq_len tokens (text)
    and x max_patches patches (vision), in the compute dtype. Transients: fp32 gradients (twice with
    gradient accumulation: the running sum and the micro-batch's), the largest single layer's backward
    working set (attention logits, probabilities and their gradients, which the XLA attention path
    materialises for the whole row and the flash kernels `impl` names do not; the windowed vision blocks'
    [window, 3 x window] scores; the MLP intermediates), one FSDP-gathered layer of weights, and the loss's
    logits chunk.
    """
    t, v = model_cfg.text, model_cfg.vision
    tensor = mesh.shape["tensor"]
    act = np.dtype(model_cfg.dtype).itemsize
    policy = model_cfg.remat_policy
    seq, patches = config.data.seq_len, config.data.max_patches
    kv_dim = t.num_key_value_heads * t.head_dim
    text_heads = max(1, t.num_attention_heads // tensor)
    vis_heads = max(1, v.num_heads // tensor)

    text_saved = t.num_hidden_layers * seq * _saved_per_token_per_layer(
        t.hidden_size, t.hidden_size + 2 * kv_dim, t.intermediate_size // tensor, text_heads, seq, policy)
    vision_saved = 0.0
    if patches:
        vision_saved = v.depth * patches * _saved_per_token_per_layer(
            v.hidden_size, 3 * v.hidden_size, v.intermediate_size // tensor, vis_heads, patches, policy)
    masked = impl not in FLASH_KERNELS  # the masked paths build a [seq, seq] mask (xla: and the scores)
    around = 4 * seq * t.hidden_size + (seq * seq / 8 if masked else 0)  # embeddings, final norm, hidden grads
    activations = rows_per_device * (act * (text_saved + vision_saved) + act * around)

    def scores(n: int, heads: int, keys: int) -> float:
        # fp32 logits, probabilities, their bf16 copy, and both gradients: five score-sized buffers, which
        # matches the TPU compiler's temporaries for the same layout (docs/scale_out.md) within a few GB.
        return 5 * heads * n * keys * 4

    def square(n: int, heads: int) -> float:  # a whole-row attention: xla's scores, cudnn's bias, flash nothing
        return {"xla": scores(n, heads, n), "cudnn": n * n * act}.get(impl, 0.0)

    def layer_working_set(n: int, width: int, ff: int, attention_bytes: float) -> float:
        mlp = 4 * n * ff * act  # gate, up, activation, and a gradient
        return rows_per_device * (attention_bytes + mlp + 6 * n * width * act)

    working = layer_working_set(seq, t.hidden_size, t.intermediate_size // tensor, square(seq, text_heads))
    if patches:
        ff = v.intermediate_size // tensor
        bins, length = positions.image_bin_shape(patches, _image_patches(config, model_cfg)) or (1, patches)
        full = layer_working_set(patches, v.hidden_size, ff, bins * square(length, vis_heads))
        windowed = layer_working_set(patches, v.hidden_size, ff, scores(patches, vis_heads, 3 * v.window_patches))
        working = max(working, full, windowed if _vision_blocks(model_cfg)[1] else 0.0)
    layer_params = 2 * t.hidden_size * (t.hidden_size + kv_dim) + 3 * t.hidden_size * t.intermediate_size
    gathered = 2 * layer_params / tensor * act  # this layer's and the prefetched next layer's weights
    logits_chunk = 3 * config.train.loss_chunk * t.vocab_size / tensor * 4
    gradients = param_bytes * (2 if micro_steps > 1 else 1)
    return {
        "activations": activations,
        "gradients": gradients,
        "transients": working + gathered + logits_chunk,
        "temporaries": gradients + working + gathered + logits_chunk,
    }


def _cost(compiled: Any) -> dict[str, float]:
    """The compiler's flops, bytes accessed and optimal_seconds; a time it cannot give is left out.

    libtpu 0.0.42.1 answers a negative optimal_seconds for v6e (-57.9 s for a 2-layer 7B step): no estimate.
    """
    cost = compiled.cost_analysis()
    if isinstance(cost, list):  # older JAX: one dict per program
        cost = cost[0] if cost else {}
    keys = ("flops", "bytes accessed", "optimal_seconds")
    return {k: float(v) for k, v in (cost or {}).items() if k in keys and not (k == "optimal_seconds" and v <= 0)}


def octomed_totals(model_cfg: ModelConfig, config: ml_collections.ConfigDict) -> dict[str, float]:
    """Tokens, patches and model FLOPs of OctoMed's full run (config.data.epochs over the reported set)."""
    epochs = config.data.epochs
    tokens = epochs * OCTOMED_EXAMPLES * OCTOMED_MEAN_TOKENS
    patches = epochs * OCTOMED_IMAGE_EXAMPLES * patches_per_image(model_cfg, config) if config.data.max_patches else 0
    return {
        "epochs": epochs,
        "tokens": float(tokens),
        "patches": float(patches),
        "model_flops": train_flops(model_cfg, tokens, patches, config.data.seq_len),
    }


def compile_step(
    config: ml_collections.ConfigDict, model_cfg: ModelConfig, mesh: jax.sharding.Mesh, rules: sharding_lib.Rules,
    rows_per_micro: int, micro_steps: int, loss_cfg: LossConfig, *, compile: bool = True,
) -> dict[str, Any]:
    """Lowers (and compiles) `train_step` for abstract state and batch on `mesh`; nothing is allocated.

    Returns:
      {"state", "batch" (abstract trees with shardings), "compiled" (or None), "lower_seconds", "compile_seconds"}.
    """
    graphdef, state = abstract_train_state(config, model_cfg, mesh, rules)
    micro = abstract_train_batch(rows_per_micro, config.data.seq_len, config.data.max_patches, model_cfg.vision,
                                 mesh, rules, image_patches=_image_patches(config, model_cfg))
    batch = with_micro_axis(micro, micro_steps)

    def step(state: Any, batch: Any) -> tuple[Any, Any]:
        model, optimizer = nnx.merge(graphdef, state)
        metrics = train_step(model, optimizer, batch, loss_cfg)
        return nnx.state((model, optimizer)), metrics

    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    jitted = jax.jit(step, out_shardings=(state_shardings, None), donate_argnums=0)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        lowered = jitted.lower(state, batch)
    out: dict[str, Any] = {"state": state, "batch": batch, "compiled": None,
                           "lower_seconds": time.perf_counter() - t0, "compile_seconds": None}
    if compile:
        t0 = time.perf_counter()
        try:
            out["compiled"] = lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            out["compile_error"] = str(e).splitlines()[0]  # the TPU compiler refuses a step that cannot fit
        out["compile_seconds"] = time.perf_counter() - t0
    return out


def _required_temp(message: str) -> float | None:
    """The temporaries the TPU compiler said it needed, from "...HLO temporaries (31.34G) exceeds...", in bytes."""
    match = re.search(r"temporaries \(([\d.]+)([KMGT])\)", message)
    if not match:
        return None
    return float(match.group(1)) * 1024 ** ("KMGT".index(match.group(2)) + 1)  # XLA prints binary units


def _with_depth(model_cfg: ModelConfig, text_layers: int, vision_blocks: int, deepstack: int = 0) -> ModelConfig:
    """The same widths with fewer layers (and `deepstack` DeepStack mergers, Qwen3-VL), unrolled (so that the
    compiler's cost analysis sees every layer)."""
    text = dataclasses.replace(model_cfg.text, num_hidden_layers=text_layers)
    vision = dataclasses.replace(model_cfg.vision, depth=vision_blocks, fullatt_block_indexes=(0,),
                                 deepstack_visual_indexes=(0,) * deepstack)
    return model_cfg.replace(text=text, vision=vision, scan_layers=False)


def layered_cost(
    config: ml_collections.ConfigDict, model_cfg: ModelConfig, mesh: jax.sharding.Mesh, rules: sharding_lib.Rules,
    rows_per_micro: int, micro_steps: int,
) -> dict[str, Any]:
    """The compiler's cost of the whole step, composed from three small unrolled compiles.

    XLA's cost analysis counts a while loop's body once, whatever its trip count, so the compiled step
    (a scan over micro-batches, over layers and over loss chunks) reports a fraction of its work. This
    compiles the step for one micro-batch, one loss chunk and 1+1, 2+1 and 1+2 (text layers + vision
    blocks), all unrolled, and extrapolates: micro_steps x (base + (L-1) text layer + (V-1) vision block);
    Qwen3-VL's base has no DeepStack merger, and one more compile (1+1 with one) adds D x its cost.
    The optimizer update is counted once per micro-batch (small: a few passes over the parameters).
    """
    t, v = model_cfg.text, model_cfg.vision
    one_chunk = dataclasses.replace(loss_config_for_plan(config), chunk=rows_per_micro * config.data.seq_len)
    costs = {}
    t0 = time.perf_counter()
    deepstack = len(v.deepstack_visual_indexes) if config.data.max_patches else 0
    variants = {"base": (1, 1, 0), "text2": (2, 1, 0), "vision2": (1, 2, 0), "deepstack": (1, 1, 1)}
    for key, (layers, blocks, mergers) in variants.items():
        if (key == "vision2" and not config.data.max_patches) or (key == "deepstack" and not deepstack):
            costs[key] = costs["base"]
            continue
        small = _with_depth(model_cfg, layers, blocks, mergers)
        costs[key] = _cost(compile_step(config, small, mesh, rules, rows_per_micro, 1, one_chunk)["compiled"])

    def total(name: str) -> float | None:
        if any(name not in c for c in costs.values()):
            return None
        base, d_text = costs["base"][name], costs["text2"][name] - costs["base"][name]
        d_vision = costs["vision2"][name] - costs["base"][name]
        d_deepstack = costs["deepstack"][name] - costs["base"][name]
        return micro_steps * (base + (t.num_hidden_layers - 1) * d_text + (v.depth - 1) * d_vision
                              + deepstack * d_deepstack)

    return {
        "flops": total("flops"),
        "bytes accessed": total("bytes accessed"),
        "optimal_seconds": total("optimal_seconds"),
        "parts": costs,
        "compile_seconds": time.perf_counter() - t0,
    }


def _text_attention_flops(model_cfg: ModelConfig, seq_len: int) -> float:
    """The text attention term of `metrics.train_flops` for one row: 6 L d s^2."""
    return train_flops(model_cfg, seq_len, 0, seq_len) - train_flops(model_cfg, seq_len, 0, 0)


def _executed_flops(model_cfg: ModelConfig, rows: int, seq_len: int, max_patches: int,
                    attn: dict[str, float]) -> float:
    """FLOPs a step executes: 6N per token and patch, 2N more where remat reruns the matmuls, and attention."""
    dense = train_flops(model_cfg, rows * seq_len, rows * max_patches, 0)  # 6N per token and patch
    rerun = model_cfg.remat_policy in ("full", "nothing_saveable")  # other policies keep the matmul outputs
    return dense * (8 / 6 if rerun else 1) + attn["executed"]


STEP_FROM_COMPILER = "compiler + flash kernels at peak"


def _step_estimate(platform: str, compiler_s: float | None, analytic_s: float,
                   measured_s: float) -> tuple[float, str]:
    """(seconds, what they come from): TPU: the compiler's roofline plus the kernels, or, where the compiler
    gives no time (`--nolayered_cost`, or v6e's cost model), the analytic roofline of the executed FLOPs; GPU:
    the MFU one GPU measured."""
    if platform != "tpu":
        return measured_s, f"MFU measured on one GPU ({MEASURED_GPU_MFU:.1%}, bench_mfu)"
    if compiler_s is not None:
        return compiler_s, STEP_FROM_COMPILER
    return analytic_s, "analytic roofline (no compiler time: layered cost off, or none for this chip)"


def plan_topology(
    config: ml_collections.ConfigDict, name: str, *, compile_gpu: bool = True, layered: bool = True
) -> dict[str, Any]:
    """Lowers (and compiles) the configured train step for one topology; returns its figures.

    Args:
      config: a training config (`configs/`), overrides applied.
      name: a topology ("v5p:4x4x4", "gpu:8", ...; see `get_topology`).
      compile_gpu: for GPU topologies, also compile on the fake CPU devices (slow for 7B on few cores);
        otherwise lower only.
      layered: for TPU topologies, also compose the whole step's cost from small unrolled compiles
        (`layered_cost`; several minutes for 7B); otherwise no compiler step time.

    Returns:
      A JSON-serialisable dict: mesh, batch geometry, bytes per device, FLOPs, times, days.
    """
    topo = get_topology(name)
    model_cfg = model_config_for_plan(config)
    # The topology's kernel, also for GPUs planned on fake CPU devices (where "auto" would take xla): there the
    # Pallas kernels lower in interpret mode, which proves they shard; memory and time count the real kernel.
    impl = attention.resolve_impl(model_cfg.attention_impl, on=topo.platform)
    model_cfg = model_cfg.replace(attention_impl=impl)
    rules = tuple(tuple(r) for r in config.rules)
    mesh = sharding_lib.make_mesh(dict(config.mesh), devices=topo.devices)
    try:
        rows_per_host, micro_steps = batch_geometry(config, mesh)  # one process sees every device here
    except ValueError as e:
        raise PlanError(f"{name}: {e}") from e
    batch_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    rows_per_device = rows_per_host // batch_ways
    out = compile_step(config, model_cfg, mesh, rules, rows_per_host, micro_steps, loss_config_for_plan(config),
                       compile=topo.platform == "tpu" or compile_gpu)
    state, batch, compiled = out["state"], out["batch"], out["compiled"]
    lower_s, compile_s = out["lower_seconds"], out["compile_seconds"]
    cost = {}
    if topo.platform == "tpu" and layered and compiled is not None:
        cost = layered_cost(config, model_cfg, mesh, rules, rows_per_host, micro_steps)

    model_state, opt_state = state[0], state[1]  # the (model, optimizer) pair
    param_bytes = device_bytes(model_state)
    optimizer_bytes = device_bytes(opt_state)
    batch_bytes = device_bytes(batch)
    estimate = estimate_memory(model_cfg, config, mesh, rows_per_device, micro_steps, param_bytes, impl)
    estimate["total"] = param_bytes + optimizer_bytes + batch_bytes + estimate["activations"] + estimate["temporaries"]

    memory: dict[str, Any] = {"parameters": param_bytes, "optimizer": optimizer_bytes, "batch": batch_bytes,
                              "estimate": estimate}
    source = "estimate"
    if compiled is not None:
        m = compiled.memory_analysis()
        compiler = {
            "argument": m.argument_size_in_bytes,
            "output": m.output_size_in_bytes,
            "alias": m.alias_size_in_bytes,
            "temp": m.temp_size_in_bytes,
            "generated_code": m.generated_code_size_in_bytes,
        }
        # Donated state aliases the outputs; the peak is what is live at once.
        compiler["total"] = compiler["argument"] + compiler["output"] - compiler["alias"] + compiler["temp"]
        memory["compiler"] = compiler
    if topo.platform == "tpu" and compiled is None:  # out of HBM: the compiler's own count of what it needed
        source = "compiler: out of HBM"
        memory["compile_error"] = out["compile_error"]
        memory["activations"] = None
        memory["temporaries"] = _required_temp(out["compile_error"])
        memory["total"] = param_bytes + optimizer_bytes + batch_bytes + (memory["temporaries"] or 0.0)
    elif topo.platform == "tpu":
        source = "compiler"
        memory["activations"] = None  # inside the compiler's temporaries
        memory["temporaries"] = memory["compiler"]["temp"]
        memory["total"] = memory["compiler"]["total"]
    else:
        memory["activations"] = estimate["activations"]
        memory["temporaries"] = estimate["temporaries"]
        memory["total"] = estimate["total"]
    memory["source"] = source

    n = len(topo.devices)
    rows, seq = config.train.global_batch_rows, config.data.seq_len
    attn = {k: rows * f for k, f in attention_flops(model_cfg, seq, config.data.max_patches, impl,
                                                   _image_patches(config, model_cfg),
                                                   patches_per_image(model_cfg, config)).items()}
    text_model_flops = train_flops(model_cfg, rows * seq, rows * config.data.max_patches, seq)
    vision_attention = attn["model"] - rows * _text_attention_flops(model_cfg, seq)  # train_flops has the text's
    step_model_flops = text_model_flops + vision_attention
    # The compiler's figures leave the flash kernels out: their FLOPs are added, and their time at the peak
    # (the roofline the compiler's `optimal_seconds` takes for everything else; attention at 8192 tokens is
    # compute-bound).
    kernel_s = attn["kernel"] / (topo.peak_flops * n)
    compiler_flops = cost["flops"] * n + attn["kernel"] if cost.get("flops") else None  # per device x devices
    compiler_step_s = cost["optimal_seconds"] + kernel_s if cost.get("optimal_seconds") else None
    # GPU (no compiler estimate here): the model FLOPs at the MFU measured on one GPU (communication not
    # counted), and a roofline: every executed FLOP at the peak, remat's forward rerun included.
    analytic_step_s = _executed_flops(model_cfg, rows, seq, config.data.max_patches, attn) / (topo.peak_flops * n)
    measured_step_s = step_model_flops / (MEASURED_GPU_MFU * topo.peak_flops * n)
    step_s, step_from = _step_estimate(topo.platform, compiler_step_s, analytic_step_s, measured_step_s)

    totals = octomed_totals(model_cfg, config)
    steps = math.ceil(totals["tokens"] / (rows * seq * PACKING_EFFICIENCY))
    mfu_step_s = step_model_flops / (TARGET_MFU * topo.peak_flops * n)
    days_mfu = totals["model_flops"] / (TARGET_MFU * topo.peak_flops * n) / 86400
    return {
        "topology": name,
        "platform": topo.platform,
        "device_kind": getattr(topo.devices[0], "device_kind", ""),
        "devices": n,
        "mesh": dict(mesh.shape),
        "model": config.model.preset,
        "remat_policy": model_cfg.remat_policy,
        "seq_len": seq,
        "max_patches": config.data.max_patches,
        "global_batch_rows": rows,
        "rows_per_micro_batch": rows_per_host,
        "rows_per_device": rows_per_device,
        "micro_steps": micro_steps,
        "hbm_bytes": topo.hbm_bytes,
        "memory": memory,
        "fits": memory["total"] <= topo.hbm_bytes and "compile_error" not in memory,
        "hbm_fraction": memory["total"] / topo.hbm_bytes,
        "flops_per_step_model": step_model_flops,
        "flops_per_step_compiler": compiler_flops,
        "cost_analysis_per_device": cost,  # composed from unrolled compiles (layered_cost)
        "cost_analysis_scanned_step": _cost(compiled) if compiled is not None else {},  # loop bodies counted once
        "attention_impl": impl,
        "attention_flops_per_step": attn,
        "kernel_seconds": kernel_s,
        "step_seconds_compiler": compiler_step_s,
        "step_seconds_analytic": analytic_step_s,
        "step_seconds_estimate": step_s,
        "step_estimate_from": step_from,
        "step_seconds_at_mfu": mfu_step_s,
        "mfu_estimate": step_model_flops / (step_s * topo.peak_flops * n) if step_s else None,
        "octomed": {**totals, "steps": steps},
        "days_at_estimate": steps * step_s / 86400 if step_s else None,
        "days_at_mfu": days_mfu,
        "target_mfu": TARGET_MFU,
        "lower_seconds": lower_s,
        "compile_seconds": compile_s,
        "cost_compile_seconds": cost.get("compile_seconds"),
    }


def _gb(x: float | None) -> str:
    return "-" if x is None else f"{x / GB:.1f}"


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """A Markdown table, one row per topology (GB = 1e9 bytes, per device)."""
    head = ("| topology | mesh (data,fsdp,tensor) | remat | rows/device x micro | params GB | optimizer GB "
            "| activations GB | XLA temp GB | total GB / HBM | memory from | FLOPs/step model / compiler+kernels "
            f"| step s estimate / {TARGET_MFU:.0%} MFU | MFU estimate | days estimate / {TARGET_MFU:.0%} MFU "
            "| compile s |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in results:
        m = r["memory"]
        mesh = ",".join(str(r["mesh"][a]) for a in sharding_lib.MESH_AXES)
        compiler_flops = f"{r['flops_per_step_compiler']:.2e}" if r["flops_per_step_compiler"] else "-"
        step = f"{r['step_seconds_estimate']:.2f}" if r["step_seconds_estimate"] else "-"
        if r["step_seconds_estimate"] and r["step_estimate_from"] != STEP_FROM_COMPILER:
            step += " (measured MFU)" if r["platform"] == "gpu" else " (analytic)"
        mfu = f"{r['mfu_estimate']:.1%}" if r["mfu_estimate"] else "-"
        days = f"{r['days_at_estimate']:.1f}" if r["days_at_estimate"] else "-"
        compile_s = f"{r['compile_seconds']:.0f}" if r["compile_seconds"] is not None else "lowered only"
        if r.get("cost_compile_seconds"):
            compile_s += f" (+{r['cost_compile_seconds']:.0f} cost)"
        activations = _gb(m["activations"]) if m["activations"] is not None else "in temp"
        lines.append(
            f"| {r['topology']} ({r['devices']}) | {mesh} | {r['remat_policy']} | {r['rows_per_device']} x "
            f"{r['micro_steps']} | {_gb(m['parameters'])} | {_gb(m['optimizer'])} | {activations} "
            f"| {_gb(m['temporaries'])} | {_gb(m['total'])} / {_gb(r['hbm_bytes'])} "
            f"{'fits' if r['fits'] else 'DOES NOT FIT'} ({r['hbm_fraction']:.0%}) | {m['source']} "
            f"| {r['flops_per_step_model']:.2e} / {compiler_flops} | {step} / {r['step_seconds_at_mfu']:.2f} "
            f"| {mfu} | {days} / {r['days_at_mfu']:.1f} | {compile_s} |"
        )
    return "\n".join(lines)
