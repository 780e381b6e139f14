"""Building blocks shared by the vision tower and the language model.

Every parameter names its logical axes (MaxText style: `embed`, `mlp`, `heads`, `kv_heads`, `vocab`,
`norm`, `layers`); `octomed_jax.sharding` maps them to mesh axes from the config. The attention mask is
one rule over segment ids, so packed rows, padding and windowed vision attention share it; the kernels
that apply it live in `octomed_jax.models.attention`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from octomed_jax.models.config import ModelConfig

Initializer = jax.nn.initializers.Initializer
_normal = jax.nn.initializers.normal(0.02)


def dense(
    in_features: int,
    out_features: int,
    axes: tuple[str | None, str | None],
    cfg: ModelConfig,
    rngs: nnx.Rngs,
    *,
    use_bias: bool,
) -> nnx.Linear:
    """An `nnx.Linear` whose kernel (and bias) carry logical sharding axes."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=cfg.jnp_dtype,
        param_dtype=cfg.jnp_param_dtype,
        kernel_init=nnx.with_partitioning(_normal, axes),
        bias_init=nnx.with_partitioning(jax.nn.initializers.zeros, (axes[1],)),
        # fp32 compute means fp32 matmuls (parity, tests); bf16 compute takes the fast default.
        precision=jax.lax.Precision.HIGHEST if cfg.dtype == "float32" else None,
        rngs=rngs,
    )


class RMSNorm(nnx.Module):
    """RMSNorm computed in fp32, then cast back, as transformers' Qwen2RMSNorm."""

    def __init__(self, dim: int, eps: float, cfg: ModelConfig):
        self.scale = nnx.Param(jnp.ones((dim,), cfg.jnp_param_dtype), out_sharding=("norm",))
        self.eps = eps
        self.dtype = cfg.jnp_dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(self.dtype) * x32.astype(self.dtype)


def layer_norm(dim: int, cfg: ModelConfig, rngs: nnx.Rngs, *, epsilon: float = 1e-6) -> nnx.LayerNorm:
    """LayerNorm (two-pass variance as torch computes it) with logical axes on scale and bias."""
    return nnx.LayerNorm(
        dim,
        epsilon=epsilon,
        use_fast_variance=False,
        dtype=cfg.jnp_dtype,
        param_dtype=cfg.jnp_param_dtype,
        scale_init=nnx.with_partitioning(jax.nn.initializers.ones, ("norm",)),
        bias_init=nnx.with_partitioning(jax.nn.initializers.zeros, ("norm",)),
        rngs=rngs,
    )


class GatedMLP(nnx.Module):
    """down(silu(gate(x)) * up(x)), the MLP of both towers (the vision one has biases)."""

    def __init__(self, dim: int, hidden: int, cfg: ModelConfig, rngs: nnx.Rngs, *, use_bias: bool):
        self.gate_proj = dense(dim, hidden, ("embed", "mlp"), cfg, rngs, use_bias=use_bias)
        self.up_proj = dense(dim, hidden, ("embed", "mlp"), cfg, rngs, use_bias=use_bias)
        self.down_proj = dense(hidden, dim, ("mlp", "embed"), cfg, rngs, use_bias=use_bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


def rotate_half(x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [..., seq, heads, head_dim] rotated by cos/sin [..., seq, head_dim], in fp32."""
    x32 = x.astype(jnp.float32)
    cos, sin = cos[..., None, :].astype(jnp.float32), sin[..., None, :].astype(jnp.float32)
    return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)


def inverse_frequencies(dim: int, theta: float) -> jax.Array:
    return 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))


def mrope_cos_sin(
    positions: jax.Array, head_dim: int, theta: float, mrope_section: Sequence[int]
) -> tuple[jax.Array, jax.Array]:
    """cos/sin [batch, seq, head_dim] of M-RoPE from positions [3, batch, seq].

    The head_dim/2 frequencies are cut into `mrope_section` chunks; chunk i rotates with the
    positions of axis i % 3 (temporal, height, width), as in transformers.
    """
    freqs = positions[..., None].astype(jnp.float32) * inverse_frequencies(head_dim, theta)  # [3, B, L, hd/2]
    bounds = [0]
    for s in mrope_section:
        bounds.append(bounds[-1] + s)
    chunks = [freqs[i % 3, ..., bounds[i] : bounds[i + 1]] for i in range(len(mrope_section))]
    freqs = jnp.concatenate(chunks, axis=-1)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def attention_mask(
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array,
    *,
    causal: bool,
    q_offset: jax.Array | int = 0,
) -> jax.Array:
    """Boolean mask [batch, 1, q, kv]: same segment (and, if causal, not in the future).

    Padding carries segment 0 and so attends only to padding: no row is fully masked, which keeps
    the softmax finite without special cases. `q_offset` [batch] places the queries inside a longer
    key sequence (decoding with a cache).
    """
    mask = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    if causal:
        q_idx = jnp.arange(q_segment_ids.shape[1])[None, :, None] + jnp.reshape(q_offset, (-1, 1, 1))
        kv_idx = jnp.arange(kv_segment_ids.shape[1])[None, None, :]
        mask = mask & (kv_idx <= q_idx)
    return mask[:, None]


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, implementation: str | None = None
) -> jax.Array:
    """q [B, T, N, H], k/v [B, S, K, H] (K divides N: grouped-query) -> [B, T, N, H], under a boolean mask.

    `jax.nn.dot_product_attention`: "cudnn" asks for cuDNN flash attention on GPU (fp16/bf16 only, and not
    every shape; the mask becomes a bias); any other `implementation` takes the XLA path (logits and softmax
    in fp32 whatever the compute dtype; it materialises [B, N, T, S] scores). This is the masked path of
    every kernel choice (decoding with a cache, a mask no kernel takes); `attention.self_attention` picks
    the kernel for self-attention over segment ids.
    """
    return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask,
                                        implementation="cudnn" if implementation == "cudnn" else "xla")
