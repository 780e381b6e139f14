"""The Qwen2.5-VL vision tower: patch embedding, windowed ViT blocks with 2-D RoPE, 2x2 patch merger.

Input patches arrive flattened as the image processor emits them, `[patches, 3*2*14*14]`, in the
block-major order of the processor; the tower reorders merge units so each attention window is
contiguous (`VisionLayout.window_index`), runs the blocks (full attention within an image frame in
`fullatt_block_indexes`, by the kernel `model.attention_impl` names; window attention elsewhere, dense
over chunks of one window's length: `attention.windowed_attention`), merges 2x2 patches, and returns one
feature per merged patch in the original order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from octomed_jax.models import attention, stacking
from octomed_jax.models.config import ModelConfig
from octomed_jax.models.layers import (
    GatedMLP,
    RMSNorm,
    apply_rotary,
    dense,
    inverse_frequencies,
)


class VisionBlock(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.vision
        self.num_heads = v.num_heads
        self.cfg = cfg
        self.norm1 = RMSNorm(v.hidden_size, v.rms_norm_eps, cfg)
        self.norm2 = RMSNorm(v.hidden_size, v.rms_norm_eps, cfg)
        self.qkv = dense(v.hidden_size, 3 * v.hidden_size, ("embed", "heads"), cfg, rngs, use_bias=True)
        self.proj = dense(v.hidden_size, v.hidden_size, ("heads", "embed"), cfg, rngs, use_bias=True)
        self.mlp = GatedMLP(v.hidden_size, v.intermediate_size, cfg, rngs, use_bias=True)

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        image_segment_ids: jax.Array,
        window_segment_ids: jax.Array,
        image_bins: jax.Array | None,
        full: jax.Array,
    ) -> jax.Array:
        """x [rows, patches, embed]; cos/sin [rows, patches, head_dim]; segment ids [rows, patches].

        `full` (a traced bool: the blocks are scanned) picks attention within each image frame (within
        `image_bins` if given: `attention.image_attention`) over attention within each window.
        """
        r, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(r, n, 3, self.num_heads, -1)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = jax.lax.cond(
            full,
            lambda q, k, v: attention.image_attention(q, k, v, image_segment_ids, image_bins, self.cfg),
            lambda q, k, v: attention.windowed_attention(q, k, v, window_segment_ids, self.cfg.vision.window_patches),
            q, k, v,
        )
        x = x + self.proj(out.reshape(r, n, d))
        return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
    """RMSNorm, then 2x2 neighbouring patches concatenated and projected by a GELU MLP."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.vision
        self.merged_dim = v.hidden_size * v.merge_unit
        self.ln_q = RMSNorm(v.hidden_size, v.rms_norm_eps, cfg)
        self.mlp_in = dense(self.merged_dim, self.merged_dim, ("embed", "mlp"), cfg, rngs, use_bias=True)
        self.mlp_out = dense(self.merged_dim, v.out_hidden_size, ("mlp", "embed"), cfg, rngs, use_bias=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.ln_q(x).reshape(*x.shape[:-2], -1, self.merged_dim)
        return self.mlp_out(jax.nn.gelu(self.mlp_in(x), approximate=False))


class VisionTower(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.vision
        self.cfg = cfg
        # The 3-D convolution with stride == kernel is a matmul over flattened patches.
        self.patch_embed = dense(v.patch_dim, v.hidden_size, ("patch", "embed"), cfg, rngs, use_bias=False)
        self.blocks = stacking.stack(lambda r: VisionBlock(cfg, r), v.depth, rngs)
        self.merger = PatchMerger(cfg, rngs)

    def __call__(
        self,
        pixel_values: jax.Array,
        window_index: jax.Array,
        rotary_positions: jax.Array,
        image_segment_ids: jax.Array,
        window_segment_ids: jax.Array,
        image_bins: jax.Array | None = None,
    ) -> jax.Array:
        """Features [rows, patches / merge_unit, out_hidden] in the original (processor) order.

        Every array has a leading `rows` axis: the images of one row are attended together (within
        their frame or window), rows never see each other.

        Args:
          pixel_values: [rows, patches, patch_dim] flattened patches, padding at the end of a row.
          window_index, rotary_positions, image_segment_ids, window_segment_ids: the arrays of
            `positions.vision_layout` for each row's images, with the same padding.
          image_bins: [rows, bins, bin_len] (`positions.image_bins`), or None: the full-attention blocks
            then attend over the whole row under the frame mask.
        """
        v = self.cfg.vision
        unit = v.merge_unit

        def to_windows(a: jax.Array) -> jax.Array:  # reorder merge units so windows are contiguous
            units = a.reshape(a.shape[0], -1, unit, a.shape[-1])
            return jnp.take_along_axis(units, window_index[:, :, None, None], axis=1).reshape(a.shape)

        x = to_windows(self.patch_embed(pixel_values.astype(self.cfg.jnp_dtype)))
        # 2-D RoPE: head_dim/4 frequencies for h, the same for w, concatenated, then doubled.
        inv_freq = inverse_frequencies(v.head_dim // 2, v.rope_theta)
        freqs = rotary_positions[..., None].astype(jnp.float32) * inv_freq
        freqs = to_windows(freqs.reshape(*freqs.shape[:2], -1))  # [rows, patches, head_dim/2]
        emb = jnp.concatenate([freqs, freqs], axis=-1)
        cos, sin = jnp.cos(emb), jnp.sin(emb)

        is_full = jnp.isin(jnp.arange(v.depth), jnp.asarray(v.fullatt_block_indexes))

        def body(block: VisionBlock, x: jax.Array, full: jax.Array) -> jax.Array:
            return block(x, cos, sin, image_segment_ids, window_segment_ids, image_bins, full)

        x = stacking.run(self.blocks, body, x, is_full, self.cfg)
        merged = self.merger(x)
        inverse = jnp.argsort(window_index, axis=-1)
        return jnp.take_along_axis(merged, inverse[:, :, None], axis=1)
