"""InternViT, the vision tower of InternVL3.5 (transformers' `InternVLVisionModel`), in Flax NNX.

Every tile is one fixed-size image (`vision.image_size`, 448 pixels in the releases): a [CLS] token and
(image_size / patch_size)^2 patch embeddings, plus a learned absolute position table of exactly that many
entries (the image processor only emits tiles of this size, so the table is never interpolated). Pre-norm ViT
layers (LayerNorm, or RMSNorm with q/k RMSNorm in InternViT-6B) scale each residual branch by a learned
per-channel factor (`lambda_1`, `lambda_2`); attention is dense within a tile, no mask, no rotary. The final
hidden states are returned unnormalised (`use_mean_pooling`: transformers' final norm is the identity).

Parameter names follow transformers' (`embeddings.cls_token`, `attention.projection_layer`, `lambda_1`, ...);
the stacked `layers` are its `encoder.layer.N` (`octomed_jax.hf.keys`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from octomed_jax.models import attention, stacking
from octomed_jax.models.config import ModelConfig
from octomed_jax.models.layers import RMSNorm, dense, layer_norm

_QK_NORM_EPS = 1e-6  # transformers' InternVLVisionRMSNorm default: the q/k norms do not read layer_norm_eps


def _norm(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    """The tower's `norm_type`: LayerNorm or RMSNorm, eps `layer_norm_eps` (kept as `vision.rms_norm_eps`)."""
    v = cfg.vision
    if v.norm_type == "rms_norm":
        return RMSNorm(v.hidden_size, v.rms_norm_eps, cfg)
    return layer_norm(v.hidden_size, cfg, rngs, epsilon=v.rms_norm_eps)


def patchify(pixel_values: jax.Array, patch_size: int) -> jax.Array:
    """[tiles, channels, H, W] -> [tiles, (H/p)*(W/p), channels*p*p], row-major patches, each channel-major as a
    Conv2d weight flattens (so the patch embedding is a matmul)."""
    t, c, h, w = pixel_values.shape
    x = pixel_values.reshape(t, c, h // patch_size, patch_size, w // patch_size, patch_size)
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(t, (h // patch_size) * (w // patch_size), c * patch_size**2)


class Embeddings(nnx.Module):
    """[CLS] + patch embeddings + the absolute position table."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.vision
        self.cfg = cfg
        table = (1, v.num_tile_patches + 1, v.hidden_size)
        self.cls_token = nnx.Param(jnp.zeros((1, 1, v.hidden_size), cfg.jnp_param_dtype),
                                   out_sharding=(None, None, "embed"))
        self.patch_embeddings = dense(v.patch_dim, v.hidden_size, ("patch", "embed"), cfg, rngs, use_bias=True)
        self.position_embeddings = nnx.Param(
            (0.02 * jax.random.normal(rngs.params(), table)).astype(cfg.jnp_param_dtype),
            out_sharding=(None, None, "embed"))

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values [tiles, channels, size, size] -> [tiles, 1 + patches, hidden]."""
        x = self.patch_embeddings(patchify(pixel_values.astype(self.cfg.jnp_dtype), self.cfg.vision.patch_size))
        cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        return jnp.concatenate([cls, x], axis=1) + self.position_embeddings[...].astype(x.dtype)


class Attention(nnx.Module):
    """Multi-head attention over a whole tile; q/k RMSNorm over all heads together (`use_qk_norm`)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.vision
        self.cfg = cfg
        self.num_heads = v.num_heads
        d = v.hidden_size
        self.q_proj = dense(d, d, ("embed", "heads"), cfg, rngs, use_bias=v.attention_bias)
        self.k_proj = dense(d, d, ("embed", "heads"), cfg, rngs, use_bias=v.attention_bias)
        self.v_proj = dense(d, d, ("embed", "heads"), cfg, rngs, use_bias=v.attention_bias)
        self.projection_layer = dense(d, d, ("heads", "embed"), cfg, rngs, use_bias=True)
        if v.use_qk_norm:
            self.q_norm = RMSNorm(d, _QK_NORM_EPS, cfg)
            self.k_norm = RMSNorm(d, _QK_NORM_EPS, cfg)

    def __call__(self, x: jax.Array) -> jax.Array:
        t, n, d = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.cfg.vision.use_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        heads = lambda a: a.reshape(t, n, self.num_heads, d // self.num_heads)  # noqa: E731
        out = attention.self_attention(heads(q), heads(k), heads(v), jnp.ones((t, n), jnp.int32), causal=False,
                                       cfg=self.cfg)
        return self.projection_layer(out.reshape(t, n, d))


class MLP(nnx.Module):
    """fc2(gelu(fc1(x))), exact (erf) GELU, with biases."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.vision
        self.fc1 = dense(v.hidden_size, v.intermediate_size, ("embed", "mlp"), cfg, rngs, use_bias=True)
        self.fc2 = dense(v.intermediate_size, v.hidden_size, ("mlp", "embed"), cfg, rngs, use_bias=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class VisionLayer(nnx.Module):
    """x + lambda_1 * attn(norm(x)), then + lambda_2 * mlp(norm(.))."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.vision
        self.attention = Attention(cfg, rngs)
        self.mlp = MLP(cfg, rngs)
        self.layernorm_before = _norm(cfg, rngs)
        self.layernorm_after = _norm(cfg, rngs)
        # transformers initialises the layer scales to layer_scale_init_value (0.1); checkpoints overwrite them.
        self.lambda_1 = nnx.Param(jnp.full((v.hidden_size,), 0.1, cfg.jnp_param_dtype), out_sharding=("norm",))
        self.lambda_2 = nnx.Param(jnp.full((v.hidden_size,), 0.1, cfg.jnp_param_dtype), out_sharding=("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.lambda_1[...].astype(x.dtype) * self.attention(self.layernorm_before(x))
        return x + self.lambda_2[...].astype(x.dtype) * self.mlp(self.layernorm_after(x))


class VisionTower(nnx.Module):
    """InternViT: tiles -> last hidden states [tiles, 1 + patches, hidden] ([CLS] first)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = Embeddings(cfg, rngs)
        self.layers = stacking.stack(lambda r: VisionLayer(cfg, r), cfg.vision.depth, rngs)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values [tiles, channels, size, size] (size = `vision.image_size`) -> [tiles, 1 + patches, hidden]."""
        x = self.embeddings(pixel_values)
        return stacking.run(self.layers, lambda layer, x, _: layer(x), x, None, self.cfg)


__all__ = ["VisionTower", "patchify"]
