"""Qwen3-VL for conditional generation, in Flax NNX (`model.family = "qwen3_vl"`).

What differs from Qwen2.5-VL (`octomed_jax.models.qwen2_5_vl`, whose interface this keeps: `__call__` like
transformers, `forward(ModelInputs)` for jit, `hidden_states`, `language_model.logits`):

- the vision tower (`qwen3_vl_vision`): 16-pixel patches, a learned position table interpolated to each grid,
  no windows, LayerNorm and a GELU MLP, DeepStack mergers;
- DeepStack: the merged features of intermediate vision blocks are added to the hidden states of the first
  language layers at the image tokens;
- the language model is Qwen3's: q/k RMSNorm per head, no qkv bias, head_dim independent of the width;
- interleaved M-RoPE: frequency j rotates with the height positions if j % 3 == 1 (j < 3 * section[1]), the
  width positions if j % 3 == 2 (j < 3 * section[2]), the temporal ones otherwise. The 3-D positions
  themselves are Qwen2.5-VL's for images (`positions.rope_index`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from octomed_jax.models import positions as pos_lib
from octomed_jax.models import stacking, text
from octomed_jax.models.config import ModelConfig
from octomed_jax.models.layers import GatedMLP, RMSNorm, apply_rotary, dense, inverse_frequencies
from octomed_jax.models.qwen2_5_vl import ModelInputs, Qwen25VL
from octomed_jax.models.qwen3_vl_vision import VisionTower


def interleaved_mrope_cos_sin(
    positions: jax.Array, head_dim: int, theta: float, mrope_section: Sequence[int]
) -> tuple[jax.Array, jax.Array]:
    """cos/sin [batch, seq, head_dim] of Qwen3-VL's interleaved M-RoPE from positions [3, batch, seq]."""
    half = head_dim // 2
    axis = np.zeros(half, np.int32)  # which of (t, h, w) each frequency follows, as transformers lays it out
    axis[1 : 3 * mrope_section[1] : 3] = 1
    axis[2 : 3 * mrope_section[2] : 3] = 2
    freqs = positions[..., None].astype(jnp.float32) * inverse_frequencies(head_dim, theta)  # [3, B, L, hd/2]
    freqs = jnp.where(axis == 0, freqs[0], jnp.where(axis == 1, freqs[1], freqs[2]))
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


class Attention(text.Attention):
    """Qwen3 attention: no biases, RMSNorm over each query and key head before the rotary."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        t = cfg.text
        self.num_heads, self.num_kv_heads, self.head_dim = t.num_attention_heads, t.num_key_value_heads, t.head_dim
        self.cfg = cfg
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_proj = dense(t.hidden_size, q_dim, ("embed", "heads"), cfg, rngs, use_bias=False)
        self.k_proj = dense(t.hidden_size, kv_dim, ("embed", "kv_heads"), cfg, rngs, use_bias=False)
        self.v_proj = dense(t.hidden_size, kv_dim, ("embed", "kv_heads"), cfg, rngs, use_bias=False)
        self.o_proj = dense(q_dim, t.hidden_size, ("heads", "embed"), cfg, rngs, use_bias=False)
        self.q_norm = RMSNorm(self.head_dim, t.rms_norm_eps, cfg)
        self.k_norm = RMSNorm(self.head_dim, t.rms_norm_eps, cfg)

    def project_kv(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> tuple[jax.Array, jax.Array]:
        b, s, _ = x.shape
        k = self.k_norm(self.k_proj(x).reshape(b, s, self.num_kv_heads, self.head_dim))
        return apply_rotary(k, cos, sin), self.v_proj(x).reshape(b, s, self.num_kv_heads, self.head_dim)

    def _query(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        b, s, _ = x.shape
        return apply_rotary(self.q_norm(self.q_proj(x).reshape(b, s, self.num_heads, self.head_dim)), cos, sin)


class DecoderLayer(text.DecoderLayer):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        t = cfg.text
        self.input_layernorm = RMSNorm(t.hidden_size, t.rms_norm_eps, cfg)
        self.self_attn = Attention(cfg, rngs)
        self.post_attention_layernorm = RMSNorm(t.hidden_size, t.rms_norm_eps, cfg)
        self.mlp = GatedMLP(t.hidden_size, t.intermediate_size, cfg, rngs, use_bias=False)


class TextModel(text.TextModel):
    """Qwen3's decoder; `__call__` adds the DeepStack features after the first layers."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        t = cfg.text
        self.cfg = cfg
        self.embed_tokens = nnx.Embed(
            t.vocab_size,
            t.hidden_size,
            dtype=cfg.jnp_dtype,
            param_dtype=cfg.jnp_param_dtype,
            embedding_init=nnx.with_partitioning(jax.nn.initializers.normal(0.02), ("vocab", "embed")),
            rngs=rngs,
        )
        self.layers = stacking.stack(lambda r: DecoderLayer(cfg, r), t.num_hidden_layers, rngs)
        self.norm = RMSNorm(t.hidden_size, t.rms_norm_eps, cfg)
        if not t.tie_word_embeddings:
            self.lm_head = dense(t.hidden_size, t.vocab_size, ("embed", "vocab"), cfg, rngs, use_bias=False)

    def __call__(
        self, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array, deepstack: jax.Array | None = None
    ) -> jax.Array:
        """Final hidden states [batch, seq, embed]; `deepstack` [n, batch, seq, embed] (zero off the image
        tokens) is added to the output of layer i < n."""
        if deepstack is None or deepstack.shape[0] == 0:
            return super().__call__(x, cos, sin, segment_ids)
        n = deepstack.shape[0]

        def body(layer: DecoderLayer, x: jax.Array, i: jax.Array) -> jax.Array:
            x = layer(x, cos, sin, segment_ids)
            return x + jnp.where(i < n, deepstack[jnp.minimum(i, n - 1)], 0).astype(x.dtype)

        x = stacking.run(self.layers, body, x, jnp.arange(self.cfg.text.num_hidden_layers), self.cfg)
        return self.norm(x)


@struct.dataclass
class VisionInputs:
    """Image patches in rows of a fixed patch count, and their `positions.InterpolatedLayout` arrays.

    One row holding every image of the batch (features fill the `<|image_pad|>` tokens in row-major order over
    the whole batch, as transformers does), or one row per token row (packed batches).
    """

    pixel_values: jax.Array  # [rows, patches, patch_dim]
    rotary_positions: jax.Array  # [rows, patches, 2]
    segment_ids: jax.Array  # [rows, patches]
    pos_index: jax.Array  # [rows, patches, 4]
    pos_weight: jax.Array  # [rows, patches, 4]

    @classmethod
    def build(cls, pixel_values: Any, image_grid_thw: Any, cfg: ModelConfig, pad_to: int | None = None) -> VisionInputs:
        """Host-side: one row with all the images, patches padded to `pad_to` (default: none)."""
        return cls.stack_rows([(pixel_values, image_grid_thw)], cfg, pad_to)

    @classmethod
    def stack_rows(cls, rows: list[tuple[Any, Any]], cfg: ModelConfig, pad_to: int | None = None) -> VisionInputs:
        """Host-side: one vision row per (pixel_values, image_grid_thw) pair, all padded to `pad_to`.

        `pad_to` defaults to the largest row's patch count; a row without images is all padding.
        """
        grids = [np.asarray(g, np.int64).reshape(-1, 3) for _, g in rows]
        if pad_to is None:
            pad_to = max(int(np.prod(g, axis=-1).sum()) for g in grids)
        fields: dict[str, list[np.ndarray]] = {f: [] for f in cls.__dataclass_fields__}
        for (pixel_values, _), grid in zip(rows, grids, strict=True):
            layout = pos_lib.interpolated_layout(grid, cfg.vision, pad_to=pad_to)
            pixels = np.zeros((0, cfg.vision.patch_dim), np.float32) if pixel_values is None else (
                np.asarray(pixel_values, np.float32))
            if pixels.shape != (layout.num_patches, cfg.vision.patch_dim):
                raise ValueError(f"pixel_values has shape {pixels.shape}; image_grid_thw describes "
                                 f"{layout.num_patches} patches of {cfg.vision.patch_dim} values")
            fields["pixel_values"].append(np.pad(pixels, ((0, pad_to - layout.num_patches), (0, 0))))
            for name in ("rotary_positions", "segment_ids", "pos_index", "pos_weight"):
                fields[name].append(getattr(layout, name))
        return cls(**{name: jnp.asarray(np.stack(arrays)) for name, arrays in fields.items()})


def place_features(features: jax.Array, is_image: jax.Array) -> jax.Array:
    """Features [rows, units, d] gathered to the image tokens of `is_image` [batch, seq] -> [batch, seq, d].

    One row for the whole batch: the k-th image token, row-major, takes feature k; one row per token row:
    the k-th image token of a row takes its row's feature k. Other tokens get an arbitrary feature (mask them).
    """
    if features.shape[0] == 1:
        rank = jnp.cumsum(is_image.reshape(-1)).reshape(is_image.shape) - 1
        return features[0][jnp.clip(rank, 0, features.shape[1] - 1)]
    rank = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, features.shape[1] - 1)
    return jnp.take_along_axis(features, rank[..., None], axis=1)


class Qwen3VL(Qwen25VL):
    """Qwen3-VL: `visual` (vision tower, merger, DeepStack mergers) and `language_model`."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if cfg.family != "qwen3_vl":
            raise ValueError(f"Qwen3VL needs model.family='qwen3_vl', got {cfg.family!r}")
        self.cfg = cfg
        self.visual = VisionTower(cfg, rngs)
        self.language_model = TextModel(cfg, rngs)

    def embed_deepstack(self, inputs: ModelInputs) -> tuple[jax.Array, jax.Array | None]:
        """Input embeddings (image features scattered in) and the DeepStack additions [n, batch, seq, embed]."""
        x = self.language_model.embed_tokens(inputs.input_ids)
        if inputs.vision is None:
            return x, None
        v = inputs.vision
        features, deepstack = self.visual(v.pixel_values, v.rotary_positions, v.segment_ids, v.pos_index,
                                          v.pos_weight)
        is_image = (inputs.input_ids == self.cfg.image_token_id)[..., None]
        x = jnp.where(is_image, place_features(features.astype(x.dtype), is_image[..., 0]), x)
        deepstack = jax.vmap(lambda f: jnp.where(is_image, place_features(f, is_image[..., 0]), 0))(deepstack)
        return x, deepstack.astype(x.dtype)

    def rotary(self, positions: jax.Array, dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
        """Interleaved M-RoPE cos/sin [batch, seq, head_dim] of positions [3, batch, seq]."""
        t = self.cfg.text
        cos, sin = interleaved_mrope_cos_sin(positions, t.head_dim, t.rope_theta, t.mrope_section)
        return cos.astype(dtype), sin.astype(dtype)

    def embed_with_rotary(self, inputs: ModelInputs) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Input embeddings and the rotary of text-only inputs (the KV-cache path, which has no DeepStack yet)."""
        if inputs.vision is not None:
            raise NotImplementedError("Qwen3-VL: decoding with images (DeepStack in the KV-cache path) is not "
                                      "built yet; see issue 14")
        x, _ = self.embed_deepstack(inputs)
        return x, *self.rotary(inputs.positions, x.dtype)

    def hidden_states(self, inputs: ModelInputs) -> jax.Array:
        """Final-norm hidden states [batch, seq, embed]."""
        x, deepstack = self.embed_deepstack(inputs)
        cos, sin = self.rotary(inputs.positions, x.dtype)
        return self.language_model(x, cos, sin, inputs.segment_ids, deepstack)

    def prepare_inputs(
        self,
        input_ids: Any,
        pixel_values: Any = None,
        image_grid_thw: Any = None,
        attention_mask: Any = None,
        position_ids: Any = None,
    ) -> ModelInputs:
        """Host-side: positions from `rope_index` (Qwen2.5-VL's for images) and the vision layout."""
        inputs = super().prepare_inputs(input_ids, None, image_grid_thw, attention_mask, position_ids)
        if pixel_values is None:
            return inputs
        if image_grid_thw is None:
            raise ValueError("pixel_values given without image_grid_thw")
        n_tokens = int((np.asarray(input_ids) == self.cfg.image_token_id).sum())
        n_features = int(np.prod(np.asarray(image_grid_thw), axis=-1).sum()) // self.cfg.vision.merge_unit
        if n_tokens != n_features:
            raise ValueError(f"{n_tokens} <|image_pad|> tokens but the images give {n_features} features")
        return inputs.replace(vision=VisionInputs.build(pixel_values, image_grid_thw, self.cfg))


__all__ = ["Qwen3VL", "VisionInputs", "interleaved_mrope_cos_sin", "place_features"]
