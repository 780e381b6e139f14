"""Qwen2.5-VL for conditional generation, in Flax NNX.

`Qwen25VL.__call__` mirrors transformers: `model(input_ids, pixel_values, image_grid_thw,
attention_mask)` returns logits, deriving the 3-D positions and the vision layout on the host when
they are not given. Inside `jax.jit` (training, sampling) they must be given: `forward` takes a
`ModelInputs` whose every field is an array of fixed shape, so one compiled step serves every batch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from octomed_jax.models import positions as pos_lib
from octomed_jax.models.config import ModelConfig
from octomed_jax.models.layers import attention_mask, mrope_cos_sin
from octomed_jax.models.text import KVCache, TextModel
from octomed_jax.models.vision import VisionTower


@struct.dataclass
class VisionInputs:
    """Image patches in rows of a fixed patch count, and their `VisionLayout` arrays.

    Either one row holding every image of the batch (features fill the `<|image_pad|>` tokens in
    row-major order over the whole batch, as transformers does), or one row per token row (packed
    training batches: each token row takes the features of its own vision row).
    """

    pixel_values: jax.Array  # [rows, patches, patch_dim]
    window_index: jax.Array  # [rows, patches / merge_unit]
    rotary_positions: jax.Array  # [rows, patches, 2]
    image_segment_ids: jax.Array  # [rows, patches]
    window_segment_ids: jax.Array  # [rows, patches]
    image_bins: jax.Array | None = None  # [rows, bins, bin_len] (`positions.image_bins`; packed training rows)

    @classmethod
    def build(
        cls, pixel_values: Any, image_grid_thw: Any, cfg: ModelConfig, pad_to: int | None = None
    ) -> VisionInputs:
        """Host-side: one row with all the images, patches padded to `pad_to` (default: none)."""
        return cls.stack_rows([(pixel_values, image_grid_thw)], cfg, pad_to)

    @classmethod
    def stack_rows(
        cls, rows: list[tuple[Any, Any]], cfg: ModelConfig, pad_to: int | None = None
    ) -> VisionInputs:
        """Host-side: one vision row per (pixel_values, image_grid_thw) pair, all padded to `pad_to`.

        `pad_to` defaults to the largest row's patch count; a row without images is all padding.
        """
        grids = [np.asarray(g, np.int64).reshape(-1, 3) for _, g in rows]
        if pad_to is None:
            pad_to = max(int(np.prod(g, axis=-1).sum()) for g in grids)
        fields: dict[str, list[np.ndarray]] = {f: [] for f in cls.__dataclass_fields__ if f != "image_bins"}
        for (pixel_values, _), grid in zip(rows, grids, strict=True):
            layout = pos_lib.vision_layout(grid, cfg.vision, pad_to=pad_to)
            pixels = np.zeros((0, cfg.vision.patch_dim), np.float32) if pixel_values is None else (
                np.asarray(pixel_values, np.float32))
            if pixels.shape != (layout.num_patches, cfg.vision.patch_dim):
                raise ValueError(
                    f"pixel_values has shape {pixels.shape}; image_grid_thw describes "
                    f"{layout.num_patches} patches of {cfg.vision.patch_dim} values"
                )
            fields["pixel_values"].append(np.pad(pixels, ((0, pad_to - layout.num_patches), (0, 0))))
            for name in ("window_index", "rotary_positions", "image_segment_ids", "window_segment_ids"):
                fields[name].append(getattr(layout, name))
        return cls(**{name: jnp.asarray(np.stack(arrays)) for name, arrays in fields.items()})


@struct.dataclass
class ModelInputs:
    """Everything one forward pass needs, as fixed-shape arrays.

    Attributes:
      input_ids: int [batch, seq].
      positions: int [3, batch, seq] M-RoPE positions (see `positions.rope_index`).
      segment_ids: int [batch, seq]; tokens attend causally within their segment; 0 is padding.
        Packed rows number their examples 1, 2, ...
      vision: the images whose features replace the `<|image_pad|>` tokens (see `VisionInputs`);
        None for text-only batches.
    """

    input_ids: jax.Array
    positions: jax.Array
    segment_ids: jax.Array
    vision: VisionInputs | None = None


def place_features(features: jax.Array, is_image: jax.Array) -> jax.Array:
    """Features [rows, units, d] gathered to the image tokens of `is_image` [batch, seq] -> [batch, seq, d].

    One row for the whole batch: the k-th image token, row-major, takes feature k (as transformers does); one
    row per token row: the k-th image token of a row takes its row's feature k. Other tokens get an arbitrary
    feature (mask them).
    """
    if features.shape[0] == 1:
        rank = jnp.cumsum(is_image.reshape(-1)).reshape(is_image.shape) - 1
        return features[0][jnp.clip(rank, 0, features.shape[1] - 1)]
    rank = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, features.shape[1] - 1)
    return jnp.take_along_axis(features, rank[..., None], axis=1)


class Qwen25VL(nnx.Module):
    """Qwen2.5-VL: `visual` (vision tower and merger) and `language_model`.

    A family subclass (`qwen3_vl.Qwen3VL`) overrides `image_features` and `rotary`; the rest is shared.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if cfg.family != "qwen2_5_vl":
            raise ValueError(f"Qwen25VL needs model.family='qwen2_5_vl', got {cfg.family!r}: build models through "
                             "octomed_jax.models.families (model_class, init_model)")
        self.cfg = cfg
        self.visual = VisionTower(cfg, rngs)
        self.language_model = TextModel(cfg, rngs)

    def image_features(self, v: VisionInputs) -> tuple[jax.Array, jax.Array | None]:
        """Merged image features [rows, units, embed], and per-layer features [n, rows, units, embed] added to
        the first n language layers (None: Qwen2.5-VL has none)."""
        return self.visual(
            v.pixel_values, v.window_index, v.rotary_positions, v.image_segment_ids, v.window_segment_ids,
            v.image_bins,
        ), None

    def rotary(self, positions: jax.Array, dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
        """M-RoPE cos/sin [batch, seq, head_dim] of positions [3, batch, seq]."""
        t = self.cfg.text
        cos, sin = mrope_cos_sin(positions, t.head_dim, t.rope_theta, t.mrope_section)
        return cos.astype(dtype), sin.astype(dtype)

    def embed(self, inputs: ModelInputs) -> tuple[jax.Array, jax.Array | None]:
        """Token embeddings with image features scattered into the `<|image_pad|>` positions, and the
        per-layer additions [n, batch, seq, embed] (zero off the image tokens; None without any)."""
        x = self.language_model.embed_tokens(inputs.input_ids)
        if inputs.vision is None:
            return x, None
        features, per_layer = self.image_features(inputs.vision)
        is_image = inputs.input_ids == self.cfg.image_token_id
        x = jnp.where(is_image[..., None], place_features(features.astype(x.dtype), is_image), x)
        if per_layer is None or per_layer.shape[0] == 0:
            return x, None
        place = lambda f: jnp.where(is_image[..., None], place_features(f, is_image), 0)  # noqa: E731
        return x, jax.vmap(place)(per_layer.astype(x.dtype))

    def embed_with_rotary(self, inputs: ModelInputs) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
        """Input embeddings (image features scattered in), the rotary cos/sin of their positions, and the
        per-layer additions (`embed`)."""
        x, layer_adds = self.embed(inputs)
        return x, *self.rotary(inputs.positions, x.dtype), layer_adds

    def hidden_states(self, inputs: ModelInputs) -> jax.Array:
        """Final-norm hidden states [batch, seq, embed]; the loss projects only where it needs to."""
        x, cos, sin, layer_adds = self.embed_with_rotary(inputs)
        return self.language_model(x, cos, sin, inputs.segment_ids, layer_adds)

    def forward(self, inputs: ModelInputs) -> jax.Array:
        """Logits [batch, seq, vocab] (jit-friendly: every input precomputed)."""
        return self.language_model.logits(self.hidden_states(inputs))

    def decode_step(
        self, inputs: ModelInputs, cache: KVCache, index: jax.Array | int, kv_segment_ids: jax.Array
    ) -> tuple[jax.Array, KVCache]:
        """Prefill or one decoding step against a key-value cache (the sampler's forward pass).

        Args:
          inputs: the new tokens [batch, seq] with their positions and (prefill only) images;
            `segment_ids` is 1 on real tokens and 0 on padding.
          cache: the cache (`KVCache.init` for a prefill).
          index: cache slot of the first new token, the same for every row (prompts are left-padded).
          kv_segment_ids: int [batch, cache_length], 1 on slots holding real tokens (prompt or generated)
            and 0 on padding; slots at or after `index + seq` are masked causally.

        Returns:
          Final-norm hidden states [batch, seq, embed] (project with `language_model.logits`) and the cache.
        """
        x, cos, sin, layer_adds = self.embed_with_rotary(inputs)
        mask = attention_mask(inputs.segment_ids, kv_segment_ids, causal=True, q_offset=index)
        return self.language_model.decode_step(x, cos, sin, mask, cache, index, layer_adds)

    def __call__(
        self,
        input_ids: Any,
        pixel_values: Any = None,
        image_grid_thw: Any = None,
        attention_mask: Any = None,
        *,
        position_ids: Any = None,
    ) -> jax.Array:
        """Logits [batch, seq, vocab], called like transformers' model (on concrete arrays)."""
        return self.forward(self.prepare_inputs(input_ids, pixel_values, image_grid_thw, attention_mask, position_ids))

    def prepare_inputs(
        self,
        input_ids: Any,
        pixel_values: Any = None,
        image_grid_thw: Any = None,
        attention_mask: Any = None,
        position_ids: Any = None,
    ) -> ModelInputs:
        """Host-side: positions from `rope_index` and the vision layout, for an unpacked batch."""
        ids = np.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {ids.shape}")
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        if position_ids is None:
            position_ids, _ = pos_lib.rope_index(ids, image_grid_thw, mask, self.cfg)
        vision = None
        if pixel_values is not None:
            if image_grid_thw is None:
                raise ValueError("pixel_values given without image_grid_thw")
            vision = VisionInputs.build(pixel_values, image_grid_thw, self.cfg)
            n_tokens = int((ids == self.cfg.image_token_id).sum())
            n_features = int(np.prod(np.asarray(image_grid_thw), axis=-1).sum()) // self.cfg.vision.merge_unit
            if n_tokens != n_features:
                raise ValueError(f"{n_tokens} <|image_pad|> tokens but the images give {n_features} features")
        return ModelInputs(
            input_ids=jnp.asarray(ids, jnp.int32),
            positions=jnp.asarray(position_ids, jnp.int32),
            segment_ids=jnp.asarray(mask, jnp.int32),
            vision=vision,
        )


def init_model(cfg: ModelConfig, seed: int = 0) -> Qwen25VL:
    """`families.init_model`: a random model of `cfg.family` (kept here for callers that import it from here)."""
    from octomed_jax.models import families  # lazy: families imports this module

    return families.init_model(cfg, seed)


def abstract_model(cfg: ModelConfig) -> Qwen25VL:
    """`families.abstract_model`: the structure of a `cfg.family` model, no memory allocated."""
    from octomed_jax.models import families

    return families.abstract_model(cfg)


__all__ = ["KVCache", "ModelInputs", "Qwen25VL", "VisionInputs", "abstract_model", "init_model", "place_features"]
