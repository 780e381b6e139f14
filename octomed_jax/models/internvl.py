"""InternVL3.5 for conditional generation, in Flax NNX (`model.family = "internvl"`).

transformers' `InternVLForConditionalGeneration` with a Qwen3 language model (the "-HF" InternVL3.5
checkpoints). What differs from Qwen2.5-VL (`octomed_jax.models.qwen2_5_vl`, whose interface this keeps:
`__call__` like transformers, `forward(ModelInputs)` for jit, `hidden_states`, `language_model.logits`):

- images arrive as fixed-size tiles (`vision.image_size` square, the image processor's dynamic tiling plus a
  thumbnail), [tiles, 3, size, size]; each tile runs through InternViT (`internvl_vision`) on its own;
- the [CLS] token is dropped, the patch grid is pixel-shuffled (2 x 2 neighbours into the channels:
  downsample_ratio 0.5) and projected by LayerNorm -> Linear -> GELU -> Linear: (size / 14 / 2)^2 features
  per tile (256 for 448-pixel tiles), filling the `<IMG_CONTEXT>` tokens in order;
- the language model is Qwen3's (q/k norms, no biases: `qwen3_vl.TextModel`) with 1-D RoPE. Positions stay
  [3, batch, seq] as in every family, the three rows equal (`positions_1d`), and `mrope_section` is
  (head_dim / 2, 0, 0): M-RoPE with one section is exactly 1-D RoPE (every frequency reads row 0).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from octomed_jax.models import qwen3_vl
from octomed_jax.models.config import ModelConfig
from octomed_jax.models.internvl_vision import VisionTower
from octomed_jax.models.layers import dense, layer_norm
from octomed_jax.models.qwen2_5_vl import ModelInputs, Qwen25VL

_PROJECTOR_NORM_EPS = 1e-5  # transformers' projector LayerNorm takes torch's default eps


def positions_1d(attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Host-side: 1-D positions as [3, batch, seq] (three equal rows) and decode deltas, `rope_index`'s contract.

    Real tokens count 0, 1, ... in each row (left padding skipped); padding gets 0. The next token of row b
    sits at `attention_mask[b].sum() + deltas[b]`, and deltas are 0 for 1-D positions.
    """
    mask = np.asarray(attention_mask).astype(bool)
    pos = np.where(mask, np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return np.broadcast_to(pos, (3, *pos.shape)).copy(), np.zeros((mask.shape[0],), np.int32)


def pixel_shuffle(x: jax.Array, merge: int) -> jax.Array:
    """[tiles, side * side, d] (row-major patches) -> [tiles, (side / merge)^2, merge^2 * d], as transformers'
    `InternVLModel.pixel_shuffle` with downsample_ratio 1 / merge: feature (i, j) holds the patches
    (merge * i + a, merge * j + b) concatenated in (a, b) order."""
    t, n, d = x.shape
    side = int(round(n**0.5))
    x = x.reshape(t, side // merge, merge, side // merge, merge, d)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(t, (side // merge) ** 2, merge * merge * d)


class Projector(nnx.Module):
    """transformers' `InternVLMultiModalProjector`: LayerNorm, Linear, GELU (exact), Linear."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        dim, out = cfg.vision.hidden_size * cfg.vision.merge_unit, cfg.text.hidden_size
        self.layer_norm = layer_norm(dim, cfg, rngs, epsilon=_PROJECTOR_NORM_EPS)
        self.linear_1 = dense(dim, out, ("embed", "mlp"), cfg, rngs, use_bias=True)
        self.linear_2 = dense(out, out, ("mlp", "embed"), cfg, rngs, use_bias=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.gelu(self.linear_1(self.layer_norm(x)), approximate=False))


@struct.dataclass
class VisionInputs:
    """Image tiles in rows of a fixed tile count, [rows, tiles, channels, size, size], or as the packed data path
    carries them, [rows, patches, patch_dim] (each tile's values in order: `internvl_images.tiles_as_patches`).

    One row holding every tile of the batch (features fill the `<IMG_CONTEXT>` tokens in row-major order over
    the whole batch, as transformers does), or one row per token row (packed batches). Padding tiles (zeros)
    come last in a row; their features are never placed.
    """

    pixel_values: jax.Array

    @classmethod
    def build(cls, pixel_values: Any, tiles_per_image: Any, cfg: ModelConfig, pad_to: int | None = None
              ) -> VisionInputs:
        """Host-side: one row with all the tiles, padded to `pad_to` tiles (default: none).

        `tiles_per_image` (the processor's per-image tile counts, or None) is checked against the tiles given.
        The data path's layout is taken too (`stack_rows`).
        """
        return cls.stack_rows([(pixel_values, tiles_per_image)], cfg, pad_to)

    @classmethod
    def stack_rows(cls, rows: list[tuple[Any, Any]], cfg: ModelConfig, pad_to: int | None = None) -> VisionInputs:
        """Host-side: one vision row per (pixel_values, tiles_per_image) pair, all padded to `pad_to` tiles.

        `pad_to` defaults to the largest row's tile count (at least 1); a row without images is all padding.
        `pixel_values` may come as the data path's [patches, patch_dim] and `tiles_per_image` as its grids
        [images, 3] ((tiles, side, side) each: `internvl_images.tiles_as_patches`).
        """
        v = cfg.vision
        tile = (v.in_channels, v.image_size, v.image_size)
        arrays = []
        for pixel_values, tiles_per_image in rows:
            px = np.zeros((0, *tile), np.float32) if pixel_values is None else np.asarray(pixel_values, np.float32)
            if px.ndim == 2 and px.size % int(np.prod(tile)) == 0:  # the data path's patches: whole tiles
                px = px.reshape(-1, *tile)
            if tiles_per_image is not None and np.ndim(tiles_per_image) == 2:  # grids: (tiles, side, side)
                tiles_per_image = np.asarray(tiles_per_image)[:, 0]
            if px.shape[1:] != tile:
                raise ValueError(f"pixel_values has shape {px.shape}; the vision tower takes [tiles, *{tile}] "
                                 "(vision.image_size tiles from the InternVL image processor)")
            if tiles_per_image is not None and int(np.sum(tiles_per_image)) != px.shape[0]:
                raise ValueError(f"tiles_per_image {np.asarray(tiles_per_image).tolist()} sums to "
                                 f"{int(np.sum(tiles_per_image))}, but pixel_values holds {px.shape[0]} tiles")
            arrays.append(px)
        longest = max(1, *(len(a) for a in arrays))
        pad_to = longest if pad_to is None else pad_to
        if pad_to < longest:
            raise ValueError(f"pad_to={pad_to} tiles, but a row holds {longest}")
        padded = [np.pad(a, ((0, pad_to - len(a)), (0, 0), (0, 0), (0, 0))) for a in arrays]
        return cls(pixel_values=jnp.asarray(np.stack(padded)))


class InternVL(Qwen25VL):
    """InternVL: `vision_tower` (InternViT), `multi_modal_projector` and `language_model` (Qwen3)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if cfg.family != "internvl":
            raise ValueError(f"InternVL needs model.family='internvl', got {cfg.family!r}")
        self.cfg = cfg
        self.vision_tower = VisionTower(cfg, rngs)
        self.multi_modal_projector = Projector(cfg, rngs)
        self.language_model = qwen3_vl.TextModel(cfg, rngs)

    @property
    def tokens_per_tile(self) -> int:
        """`<IMG_CONTEXT>` tokens per tile (transformers' `image_seq_length`)."""
        return self.cfg.vision.num_tile_patches // self.cfg.vision.merge_unit

    def image_features(self, v: VisionInputs) -> tuple[jax.Array, None]:
        """Projected features [rows, tiles * tokens_per_tile, embed], in tile order; no per-layer features."""
        vc = self.cfg.vision
        rows = v.pixel_values.shape[0]
        # Either layout (tiles, or the packed rows' patches of whole tiles) is the same values in tile order.
        hidden = self.vision_tower(v.pixel_values.reshape(-1, vc.in_channels, vc.image_size, vc.image_size))
        features = self.multi_modal_projector(pixel_shuffle(hidden[:, 1:], vc.spatial_merge_size))
        return features.reshape(rows, -1, features.shape[-1]), None

    def prepare_inputs(
        self,
        input_ids: Any,
        pixel_values: Any = None,
        tiles_per_image: Any = None,
        attention_mask: Any = None,
        position_ids: Any = None,
    ) -> ModelInputs:
        """Host-side: 1-D positions from the mask (or `position_ids`, [batch, seq] as transformers takes them, or
        [3, batch, seq]) and the tiles (`pixel_values` [tiles, 3, size, size], every image's tiles in order)."""
        ids = np.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {ids.shape}")
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        positions = positions_1d(mask)[0] if position_ids is None else np.broadcast_to(position_ids, (3, *ids.shape))
        vision = None
        if pixel_values is not None:
            vision = VisionInputs.build(pixel_values, tiles_per_image, self.cfg)
            n_tokens = int((ids == self.cfg.image_token_id).sum())
            n_features = vision.pixel_values.shape[1] * self.tokens_per_tile
            if n_tokens != n_features:
                raise ValueError(f"{n_tokens} <IMG_CONTEXT> tokens but the {vision.pixel_values.shape[1]} tiles give "
                                 f"{n_features} features ({self.tokens_per_tile} per tile)")
        return ModelInputs(
            input_ids=jnp.asarray(ids, jnp.int32),
            positions=jnp.asarray(positions, jnp.int32),
            segment_ids=jnp.asarray(mask, jnp.int32),
            vision=vision,
        )


__all__ = ["InternVL", "Projector", "VisionInputs", "pixel_shuffle", "positions_1d"]
