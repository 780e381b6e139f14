"""Qwen3-VL for conditional generation, in Flax NNX (`model.family = "qwen3_vl"`).

What differs from Qwen2.5-VL (`octomed_jax.models.qwen2_5_vl`, whose interface this keeps: `__call__` like
transformers, `forward(ModelInputs)` for jit, `hidden_states`, `language_model.logits`):

- the vision tower (`qwen3_vl_vision`): 16-pixel patches, a learned position table interpolated to each grid,
  no windows, LayerNorm and a GELU MLP, DeepStack mergers;
- DeepStack: the merged features of intermediate vision blocks are added to the hidden states of the first
  language layers at the image tokens (`Qwen25VL.embed`'s per-layer additions, in training and in the
  KV-cache prefill alike);
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
from octomed_jax.models import text
from octomed_jax.models.config import ModelConfig
from octomed_jax.models.layers import RMSNorm, apply_rotary, inverse_frequencies
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

    qkv_bias = False

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        super().__init__(cfg, rngs)
        self.q_norm = RMSNorm(self.head_dim, cfg.text.rms_norm_eps, cfg)
        self.k_norm = RMSNorm(self.head_dim, cfg.text.rms_norm_eps, cfg)

    def project_kv(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> tuple[jax.Array, jax.Array]:
        b, s, _ = x.shape
        k = self.k_norm(self.k_proj(x).reshape(b, s, self.num_kv_heads, self.head_dim))
        return apply_rotary(k, cos, sin), self.v_proj(x).reshape(b, s, self.num_kv_heads, self.head_dim)

    def _query(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        b, s, _ = x.shape
        return apply_rotary(self.q_norm(self.q_proj(x).reshape(b, s, self.num_heads, self.head_dim)), cos, sin)


class DecoderLayer(text.DecoderLayer):
    attention_class = Attention


class TextModel(text.TextModel):
    """Qwen3's decoder; the DeepStack features arrive as `layer_adds` (`text.TextModel.__call__`)."""

    layer_class = DecoderLayer


@struct.dataclass
class VisionInputs:
    """Image patches in rows of a fixed patch count, and their `positions.InterpolatedLayout` arrays.

    One row holding every image of the batch (features fill the `<|image_pad|>` tokens in row-major order over
    the whole batch, as transformers does), or one row per token row (packed batches).
    """

    pixel_values: jax.Array  # [rows, patches, patch_dim]
    rotary_positions: jax.Array  # [rows, patches, 2]
    image_segment_ids: jax.Array  # [rows, patches] (named apart from the token rows' segment ids)
    pos_index: jax.Array  # [rows, patches, 4]
    pos_weight: jax.Array  # [rows, patches, 4]
    image_bins: jax.Array | None = None  # [rows, bins, bin_len] (`positions.image_bins`; packed training rows)

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
        fields: dict[str, list[np.ndarray]] = {f: [] for f in cls.__dataclass_fields__ if f != "image_bins"}
        for (pixel_values, _), grid in zip(rows, grids, strict=True):
            layout = pos_lib.interpolated_layout(grid, cfg.vision, pad_to=pad_to)
            pixels = np.zeros((0, cfg.vision.patch_dim), np.float32) if pixel_values is None else (
                np.asarray(pixel_values, np.float32))
            if pixels.shape != (layout.num_patches, cfg.vision.patch_dim):
                raise ValueError(f"pixel_values has shape {pixels.shape}; image_grid_thw describes "
                                 f"{layout.num_patches} patches of {cfg.vision.patch_dim} values")
            fields["pixel_values"].append(np.pad(pixels, ((0, pad_to - layout.num_patches), (0, 0))))
            for name in ("rotary_positions", "image_segment_ids", "pos_index", "pos_weight"):
                fields[name].append(getattr(layout, name))
        return cls(**{name: jnp.asarray(np.stack(arrays)) for name, arrays in fields.items()})


class Qwen3VL(Qwen25VL):
    """Qwen3-VL: `visual` (vision tower, merger, DeepStack mergers) and `language_model`."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if cfg.family != "qwen3_vl":
            raise ValueError(f"Qwen3VL needs model.family='qwen3_vl', got {cfg.family!r}")
        self.cfg = cfg
        self.visual = VisionTower(cfg, rngs)
        self.language_model = TextModel(cfg, rngs)

    def image_features(self, v: VisionInputs) -> tuple[jax.Array, jax.Array]:
        """Merged image features [rows, units, embed] and the DeepStack features [n, rows, units, embed]."""
        return self.visual(v.pixel_values, v.rotary_positions, v.image_segment_ids, v.pos_index, v.pos_weight,
                           v.image_bins)

    def rotary(self, positions: jax.Array, dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
        """Interleaved M-RoPE cos/sin [batch, seq, head_dim] of positions [3, batch, seq]."""
        t = self.cfg.text
        cos, sin = interleaved_mrope_cos_sin(positions, t.head_dim, t.rope_theta, t.mrope_section)
        return cos.astype(dtype), sin.astype(dtype)

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


__all__ = ["Qwen3VL", "VisionInputs", "interleaved_mrope_cos_sin"]
