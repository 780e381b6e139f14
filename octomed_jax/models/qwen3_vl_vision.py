"""The Qwen3-VL vision tower: patch embedding, a learned position table interpolated to each grid, ViT blocks
with 2-D RoPE, the 2x2 merger, and the DeepStack mergers of intermediate blocks.

Input patches arrive flattened as the image processor emits them, `[patches, 3*2*16*16]`, block-major over
2x2 merge units; unlike Qwen2.5-VL there are no windows: every block attends within one image frame (segment
ids, through the kernel `model.attention_impl` names), so the patches keep the processor's order throughout.
The blocks named by `deepstack_visual_indexes` also feed a merger each (LayerNorm after the 2x2 shuffle);
those features are added to the first language layers' hidden states at the image tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from octomed_jax.models import attention, stacking
from octomed_jax.models.config import ModelConfig
from octomed_jax.models.layers import apply_rotary, dense, inverse_frequencies, layer_norm


class VisionMLP(nnx.Module):
    """linear_fc2(gelu_tanh(linear_fc1(x))), with biases."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.vision
        self.linear_fc1 = dense(v.hidden_size, v.intermediate_size, ("embed", "mlp"), cfg, rngs, use_bias=True)
        self.linear_fc2 = dense(v.intermediate_size, v.hidden_size, ("mlp", "embed"), cfg, rngs, use_bias=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_fc2(jax.nn.gelu(self.linear_fc1(x), approximate=True))


class VisionBlock(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.vision
        self.num_heads = v.num_heads
        self.cfg = cfg
        self.norm1 = layer_norm(v.hidden_size, cfg, rngs)
        self.norm2 = layer_norm(v.hidden_size, cfg, rngs)
        self.qkv = dense(v.hidden_size, 3 * v.hidden_size, ("embed", "heads"), cfg, rngs, use_bias=True)
        self.proj = dense(v.hidden_size, v.hidden_size, ("heads", "embed"), cfg, rngs, use_bias=True)
        self.mlp = VisionMLP(cfg, rngs)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array,
                 image_bins: jax.Array | None = None) -> jax.Array:
        """x [rows, patches, embed]; cos/sin [rows, patches, head_dim]; segment_ids [rows, patches] (one per
        frame); image_bins: `positions.image_bins` or None (`attention.image_attention`)."""
        r, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(r, n, 3, self.num_heads, -1)
        q, k = apply_rotary(qkv[:, :, 0], cos, sin), apply_rotary(qkv[:, :, 1], cos, sin)
        out = attention.image_attention(q, k, qkv[:, :, 2], segment_ids, image_bins, self.cfg)
        x = x + self.proj(out.reshape(r, n, d))
        return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
    """2x2 neighbouring patches concatenated, projected by a GELU MLP; LayerNorm before the concatenation (the
    final merger) or after it (`postshuffle`: the DeepStack mergers)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, *, postshuffle: bool):
        v = cfg.vision
        self.merged_dim = v.hidden_size * v.merge_unit
        self.postshuffle = postshuffle
        self.norm = layer_norm(self.merged_dim if postshuffle else v.hidden_size, cfg, rngs)
        self.linear_fc1 = dense(self.merged_dim, self.merged_dim, ("embed", "mlp"), cfg, rngs, use_bias=True)
        self.linear_fc2 = dense(self.merged_dim, v.out_hidden_size, ("mlp", "embed"), cfg, rngs, use_bias=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [rows, patches, embed] -> [rows, patches / merge_unit, out_hidden]."""
        shuffle = lambda a: a.reshape(*a.shape[:-2], -1, self.merged_dim)  # noqa: E731
        x = self.norm(shuffle(x)) if self.postshuffle else shuffle(self.norm(x))
        return self.linear_fc2(jax.nn.gelu(self.linear_fc1(x), approximate=False))


class VisionTower(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.vision
        self.cfg = cfg
        # The 3-D convolution with stride == kernel is a matmul over flattened patches.
        self.patch_embed = dense(v.patch_dim, v.hidden_size, ("patch", "embed"), cfg, rngs, use_bias=True)
        self.pos_embed = nnx.Embed(
            v.num_position_embeddings,
            v.hidden_size,
            dtype=cfg.jnp_dtype,
            param_dtype=cfg.jnp_param_dtype,
            embedding_init=nnx.with_partitioning(jax.nn.initializers.normal(0.02), (None, "embed")),
            rngs=rngs,
        )
        self.blocks = stacking.stack(lambda r: VisionBlock(cfg, r), v.depth, rngs)
        self.merger = PatchMerger(cfg, rngs, postshuffle=False)
        self.deepstack_merger_list = nnx.List(
            [PatchMerger(cfg, rngs, postshuffle=True) for _ in v.deepstack_visual_indexes]
        )

    def __call__(
        self,
        pixel_values: jax.Array,
        rotary_positions: jax.Array,
        segment_ids: jax.Array,
        pos_index: jax.Array,
        pos_weight: jax.Array,
        image_bins: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Merged features and DeepStack features, in the processor's order.

        Every array has a leading `rows` axis: the images of one row are attended within their own frame,
        rows never see each other.

        Args:
          pixel_values: [rows, patches, patch_dim] flattened patches, padding at the end of a row.
          rotary_positions, segment_ids, pos_index, pos_weight: the arrays of `positions.interpolated_layout`
            (`image_segment_ids` as `segment_ids`) for each row's images, with the same padding.
          image_bins: [rows, bins, bin_len] (`positions.image_bins`) or None (attention over the whole row).

        Returns:
          features [rows, patches / merge_unit, out_hidden] and deepstack [len(deepstack_visual_indexes), rows,
          patches / merge_unit, out_hidden].
        """
        v = self.cfg.vision
        x = self.patch_embed(pixel_values.astype(self.cfg.jnp_dtype))
        table = self.pos_embed.embedding[...].astype(x.dtype)
        x = x + jnp.einsum("rpk,rpkd->rpd", pos_weight.astype(x.dtype), table[pos_index],
                           precision=jax.lax.Precision.HIGHEST)
        # 2-D RoPE: head_dim/4 frequencies for h, the same for w, concatenated, then doubled.
        freqs = rotary_positions[..., None].astype(jnp.float32) * inverse_frequencies(v.head_dim // 2, v.rope_theta)
        freqs = freqs.reshape(*freqs.shape[:2], -1)
        emb = jnp.concatenate([freqs, freqs], axis=-1)
        cos, sin = jnp.cos(emb), jnp.sin(emb)

        # Block i's output is kept in slot i's DeepStack tap (slot n: a scratch slot for the other blocks).
        n = len(v.deepstack_visual_indexes)
        slots = jnp.full((v.depth,), n, jnp.int32).at[jnp.asarray(v.deepstack_visual_indexes, jnp.int32)].set(
            jnp.arange(n, dtype=jnp.int32))
        taps = jnp.zeros((n + 1, *x.shape), x.dtype)

        def body(block: VisionBlock, carry: tuple[jax.Array, jax.Array], slot: jax.Array):
            x, taps = carry
            x = block(x, cos, sin, segment_ids, image_bins)
            return x, jax.lax.dynamic_update_index_in_dim(taps, x, slot, axis=0)

        x, taps = stacking.run(self.blocks, body, (x, taps), slots, self.cfg)
        deepstack = [merger(taps[i]) for i, merger in enumerate(self.deepstack_merger_list)]
        empty = jnp.zeros((0, *x.shape[:-2], x.shape[-2] // v.merge_unit, v.out_hidden_size), x.dtype)
        return self.merger(x), jnp.stack(deepstack) if deepstack else empty
