"""Attention kernels behind one call, chosen by `model.attention_impl`.

Every kernel computes the same function: queries attend to keys of their own segment (packed rows number
their examples 1, 2, ...; padding is segment 0 and attends only to padding), causally for the language
model. They differ in what they materialise:

- "xla": `jax.nn.dot_product_attention` under a boolean mask; the [batch, heads, q, kv] fp32 scores are
  materialised (any backend; the reference).
- "cudnn": the same call with `implementation="cudnn"` (GPU, bf16/fp16). jax 0.10 gives it no segment ids:
  the packed mask reaches cuDNN as an additive [batch, 1, q, kv] bias, so it is exact on packed rows but
  keeps a quadratic bias. (Its sequence-length arguments describe one sequence per row, not a packed row.)
- "splash": Pallas splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`) with a causal
  (or full) mask, `SegmentIds` and grouped-query heads natively; no quadratic buffer, forward or backward.
- "pallas_gpu": Pallas Triton flash attention (`jax.experimental.pallas.ops.gpu.attention.mha`), which takes
  segment ids and a causal flag; key/value heads are repeated to the query heads (the kernel has no GQA).
- "auto": splash on TPU, pallas_gpu on GPU, xla elsewhere.

The Pallas kernels run inside `jax.shard_map` over the mesh axes that the logical axes `batch` and
`heads` map to (the flax logical-axis rules in context, else `sharding.DEFAULT_RULES`), so each device runs
the kernel on its own rows and heads; off their hardware they run in interpret mode (slow, exact), which
is how the CPU tests exercise the same code.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from octomed_jax import sharding as sharding_lib
from octomed_jax.models.config import ModelConfig
from octomed_jax.models.layers import attention_mask, dot_product_attention

Kernel = Callable[..., jax.Array]
_LANES = 128  # the Pallas kernels tile the sequence in multiples of this
_PAD_SEGMENT = -1  # sequence padding added here: attends only to itself, never to a real segment
# pallas_gpu's one tile, forward and backward: its fused backward needs as many query as key blocks, and on an
# H200 (232,448 B of shared memory per block) 512-slot tiles ask for 294,912 B and fail to compile.
_GPU_TILE = 128


def platform() -> str:
    """The platform the computation is placed on: the context mesh's devices, else the default backend.

    A mesh of TPU devices described from a CPU host (ahead-of-time compiles in `planning`) counts as TPU.
    """
    device = jax.sharding.get_abstract_mesh().abstract_device  # inside jit too; None without a mesh
    return jax.default_backend() if device is None else device.platform


def resolve_impl(impl: str, on: str | None = None) -> str:
    """The kernel "auto" stands for on platform `on` (default: `platform()`); other names unchanged."""
    if impl != "auto":
        return impl
    return {"tpu": "splash", "gpu": "pallas_gpu"}.get(on or platform(), "xla")


def self_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *, causal: bool, cfg: ModelConfig
) -> jax.Array:
    """q [B, T, N, H], k/v [B, T, K, H] (K divides N), segment_ids int [B, T] -> [B, T, N, H].

    Self-attention within segments (causal if asked), by the kernel `cfg.attention_impl` names.
    """
    impl = resolve_impl(cfg.attention_impl)
    if impl in ("xla", "cudnn"):
        mask = attention_mask(segment_ids, segment_ids, causal=causal)
        return dot_product_attention(q, k, v, mask, impl)
    kernel = _splash if impl == "splash" else _pallas_gpu
    interpret = platform() != ("tpu" if impl == "splash" else "gpu")
    b, t = segment_ids.shape
    bq, bkv, padded = _tiles(t, cfg, impl)
    if padded != t:  # the kernels tile the sequence: pad it with a segment of its own, then cut it off
        pad = [(0, 0), (0, padded - t), (0, 0), (0, 0)]
        q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
        segment_ids = jnp.pad(segment_ids, ((0, 0), (0, padded - t)), constant_values=_PAD_SEGMENT)
    run = lambda q, k, v, s: kernel(q, k.astype(q.dtype), v.astype(q.dtype), s, causal=causal,  # noqa: E731
                                    block_q=bq, block_kv=bkv, interpret=interpret)
    out = _over_mesh(run, q, k, v, segment_ids)
    return out[:, :t]


def _tiles(t: int, cfg: ModelConfig, impl: str) -> tuple[int, int, int]:
    """Query and key tiles of kernel `impl` for a sequence of `t` (capped at it), and the padded length."""
    lanes = -(-t // _LANES) * _LANES
    bq, bkv = min(cfg.attention_block_q, lanes), min(cfg.attention_block_kv, lanes)
    if impl == "pallas_gpu":
        bq = bkv = min(bq, bkv, _GPU_TILE)
    tile = math.lcm(bq, bkv)
    return bq, bkv, -(-t // tile) * tile


def _mesh_axes(logical: str, mesh: jax.sharding.AbstractMesh, *sizes: int) -> str | tuple[str, ...] | None:
    """Mesh axes of a logical axis under the rules in context, if they divide every one of `sizes`."""
    rules = nn.get_logical_axis_rules() or sharding_lib.DEFAULT_RULES
    axes = sharding_lib.logical_to_mesh((logical,), rules)[0]
    axes = tuple(a for a in ((axes,) if isinstance(axes, str) else axes or ()) if a in mesh.axis_names)
    n = math.prod(mesh.shape[a] for a in axes)
    if not axes or any(s % n for s in sizes):
        return None  # not divisible (e.g. fewer key/value heads than tensor shards): replicated
    return axes[0] if len(axes) == 1 else axes


def _over_mesh(run: Kernel, q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """`run` on each device's rows and heads (`jax.shard_map`), or directly without a mesh in context."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return run(q, k, v, segment_ids)
    batch = _mesh_axes("batch", mesh, q.shape[0])
    heads = _mesh_axes("heads", mesh, q.shape[2], k.shape[2])  # q and kv heads split alike keep GQA groups
    qkv = P(batch, None, heads, None)
    return jax.shard_map(run, mesh=mesh, in_specs=(qkv, qkv, qkv, P(batch, None)), out_specs=qkv,
                         check_vma=False)(q, k, v, segment_ids)


def _splash(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *, causal: bool, block_q: int,
            block_kv: int, interpret: bool) -> jax.Array:
    """Splash attention on one device's share: q [b, t, n, h], k/v [b, t, kh, h] (GQA native)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    _, t, n, h = q.shape
    shape = (t, t)
    mask = splash.MultiHeadMask([splash.CausalMask(shape) if causal else splash.FullMask(shape)] * n)
    sizes = splash.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
                              block_q_dkv=block_q, block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv,
                              block_q_dq=block_q, block_kv_dq=block_kv)
    kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  [b, heads, t, h], as the kernel takes them
    scaled = (q.astype(jnp.float32) * h**-0.5).astype(q.dtype)  # the kernel does not scale the logits
    out = jax.vmap(kernel)(heads_first(scaled), heads_first(k), heads_first(v),
                           splash.SegmentIds(q=segment_ids, kv=segment_ids))
    return heads_first(out)


def _pallas_gpu(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *, causal: bool, block_q: int,
                block_kv: int, interpret: bool) -> jax.Array:
    """Pallas Triton flash attention on one device's share; key/value heads repeated to the query heads."""
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention

    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    sizes = gpu_attention.BlockSizes(block_q=block_q, block_k=block_kv, block_q_dkv=block_q,
                                     block_kv_dkv=block_kv, block_q_dq=block_q, block_kv_dq=block_kv)
    return gpu_attention.mha(q, k, v, segment_ids, sm_scale=q.shape[-1] ** -0.5, causal=causal,
                             block_sizes=sizes, interpret=interpret)


def image_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, bins: jax.Array | None,
                    cfg: ModelConfig) -> jax.Array:
    """Full attention within each image frame: over bins of whole frames, else over the row under the mask.

    q/k/v [B, T, N, H], segment_ids [B, T] (one id per frame, 0 on padding); bins int [B, n, L] or None
    (`positions.image_bins`: each frame's slots, packed whole into n bins of L, -1 where empty). With bins the
    kernel `cfg.attention_impl` names runs on [B * n, L] rows: n * L^2 work per row instead of T^2, the same
    result on every real patch. Padding slots come out 0 (they attend only to padding, and no real patch
    ever reads them).
    """
    if bins is None:
        return self_attention(q, k, v, segment_ids, causal=False, cfg=cfg)
    b, t, n_heads, h = q.shape
    _, n, length = bins.shape
    slots = bins.reshape(b, n * length)
    filled = slots >= 0
    index = jnp.where(filled, slots, 0)

    def binned(x: jax.Array) -> jax.Array:  # [B, T, heads, H] -> [B * n, L, heads, H]
        return jnp.take_along_axis(x, index[:, :, None, None], axis=1).reshape(b * n, length, *x.shape[2:])

    seg = jnp.where(filled, jnp.take_along_axis(segment_ids, index, axis=1), 0).reshape(b * n, length)
    out = self_attention(binned(q), binned(k), binned(v), seg, causal=False, cfg=cfg)
    target = jnp.where(filled, slots, t)  # empty slots land out of range and are dropped
    return jnp.zeros_like(q).at[jnp.arange(b)[:, None], target].set(
        out.reshape(b, n * length, n_heads, h).astype(q.dtype), mode="drop")


def windowed_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, window: int) -> jax.Array:
    """Exact attention within contiguous segments of at most `window` slots, in O(T * window) work.

    q/k/v [B, T, N, H], segment_ids [B, T] (each segment contiguous and at most `window` long: the vision
    tower's windows in window order). The sequence is cut into chunks of `window`; a segment then lies
    within a chunk and its two neighbours, so each chunk's queries attend densely to those three chunks'
    keys under the segment mask: [B * chunks, window, 3 * window] scores instead of [B, T, T]. Slots of
    segment 0 (padding) attend to padding in the same three chunks only (their outputs are not used).
    """
    b, t, n, h = q.shape
    chunks = -(-t // window)
    pad = chunks * window - t

    def chunked(x: jax.Array, fill: int = 0) -> jax.Array:  # [B, T, ...] -> [B, chunks, window, ...]
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
        return x.reshape(b, chunks, window, *x.shape[2:])

    def neighbours(x: jax.Array, fill: int = 0) -> jax.Array:  # chunks i-1, i, i+1 side by side
        x = jnp.pad(x, [(0, 0), (1, 1)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
        return jnp.concatenate([x[:, :-2], x[:, 1:-1], x[:, 2:]], axis=2)

    seg = chunked(segment_ids, _PAD_SEGMENT)
    kv_seg = neighbours(seg, _PAD_SEGMENT - 1)  # the chunks before the first and after the last match nothing
    mask = seg[..., :, None] == kv_seg[..., None, :]  # [B, chunks, window, 3 * window]
    flat = lambda x: x.reshape(b * chunks, *x.shape[2:])  # noqa: E731
    out = dot_product_attention(flat(chunked(q)), flat(neighbours(chunked(k))), flat(neighbours(chunked(v))),
                                flat(mask)[:, None])
    return out.reshape(b, chunks * window, n, h)[:, :t]
