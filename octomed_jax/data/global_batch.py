"""Per-host packed numpy batches -> the global, batch-sharded `TrainBatch` the train step takes.

Every host holds `batch_size` rows; `jax.make_array_from_process_local_data` assembles the global
arrays (global batch = rows per host x process count) with the mesh's batch sharding
(`sharding.batch_sharding`, logical axis "batch"). M-RoPE positions are per row [B, 3, L] on the host
and [3, B, L] in the model, so they are transposed here and sharded on their second axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh

from octomed_jax import sharding as sharding_lib
from octomed_jax.models.config import VisionConfig
from octomed_jax.models.families import vision_inputs_class
from octomed_jax.models.positions import row_layout
from octomed_jax.models.qwen2_5_vl import ModelInputs

_TEXT_FIELDS = ("input_ids", "targets", "loss_mask", "segment_ids", "positions")
_QWEN2_5_VISION = VisionConfig()  # the default tower (Qwen2.5-VL's fields)


@struct.dataclass
class TrainBatch:
    """One global training batch.

    Attributes:
      inputs: the model inputs (`Qwen25VL.forward`); `vision` has one row of patches per token row, or is
        None for text-only data (`max_patches` = 0).
      targets: int32 [B, L], the token each position is trained to predict.
      loss_mask: float32 [B, L], 1 where the target is an assistant token.
    """

    inputs: ModelInputs
    targets: jax.Array
    loss_mask: jax.Array

    @property
    def num_loss_tokens(self) -> jax.Array:
        return self.loss_mask.sum()


def _batch_axis(name: str, lead: int = 0) -> int:
    """The batch axis of field `name` behind `lead` leading axes (the micro-batch axis)."""
    return (1 if name == "positions" else 0) + lead


def _model_layout(batch: Mapping[str, np.ndarray], lead: int = 0) -> dict[str, np.ndarray]:
    """Host arrays in the model's layout: positions [..., B, 3, L] -> [..., 3, B, L] (`lead` leading axes)."""
    out = dict(batch)
    out["positions"] = np.ascontiguousarray(np.swapaxes(np.asarray(batch["positions"]), lead, lead + 1))
    return out


def _assemble(arrays: Mapping[str, Any]) -> TrainBatch:
    vision = None
    if "pixel_values" in arrays:  # the vision keys name the family (`positions.row_layout`)
        cls = vision_inputs_class(k for k in arrays if k not in _TEXT_FIELDS)
        vision = cls(**{k: arrays[k] for k in cls.__dataclass_fields__ if k in arrays})  # optional ones absent
    return TrainBatch(
        inputs=ModelInputs(
            input_ids=arrays["input_ids"],
            positions=arrays["positions"],
            segment_ids=arrays["segment_ids"],
            vision=vision,
        ),
        targets=arrays["targets"],
        loss_mask=arrays["loss_mask"],
    )


def to_global_batch(
    batch: Mapping[str, np.ndarray], mesh: Mesh, rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES
) -> TrainBatch:
    """Turns this host's packed batch into the global batch, sharded over the mesh's batch axes.

    Every process must call it with a batch of the same shapes (collective).

    Args:
      batch: the host's batch from `PackedBatchIterator` (numpy, leading axis = rows on this host).
      mesh: the training mesh.
      rules: logical-to-mesh rules; "batch" names the batch axes.

    Returns:
      A `TrainBatch` of global `jax.Array`s, batch axis = rows per host x process count.
    """
    return _place(_model_layout(batch), mesh, rules)


def to_global_micro_batches(
    batches: Sequence[Mapping[str, np.ndarray]], mesh: Mesh, rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES
) -> TrainBatch:
    """One step's host micro-batches -> one global batch with a leading micro-batch axis (what the step takes).

    The micro-batches are stacked on the host and placed once: the arrays and shardings of `jnp.stack` over
    `to_global_batch` of each, without a device op per field. Collective like `to_global_batch`.

    Args:
      batches: the host's micro-batches of one step, each as `to_global_batch` takes it.
      mesh: the training mesh.
      rules: logical-to-mesh rules; "batch" names the batch axes.

    Returns:
      A `TrainBatch` of global `jax.Array`s [micro, rows per host x process count, ...] (positions [micro, 3, B, L]).
    """
    stacked = {k: np.stack([np.asarray(b[k]) for b in batches]) for k in batches[0]}
    return _place(_model_layout(stacked, lead=1), mesh, rules, lead=1)


def _place(local: Mapping[str, np.ndarray], mesh: Mesh, rules: sharding_lib.Rules, lead: int = 0) -> TrainBatch:
    """Host arrays in the model's layout -> global arrays sharded on their batch axis (behind `lead` axes)."""
    arrays = {}
    for name, value in local.items():
        value = np.asarray(value)
        spec = sharding_lib.batch_sharding(mesh, rules, value.ndim, _batch_axis(name, lead))
        arrays[name] = jax.make_array_from_process_local_data(spec, value)
    return _assemble(arrays)


def to_local_batch(batch: Mapping[str, np.ndarray]) -> TrainBatch:
    """The batch as unsharded device arrays on the default device (single-device tests and tools)."""
    return _assemble({k: jnp.asarray(v) for k, v in _model_layout(batch).items()})


def train_batch_shardings(
    mesh: Mesh,
    rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES,
    *,
    with_vision: bool = True,
    vcfg: VisionConfig = _QWEN2_5_VISION,
) -> TrainBatch:
    """The `NamedSharding` of every field of a `TrainBatch` (for `jax.jit(in_shardings=...)`); the vision
    fields are those of `vcfg`'s family."""
    shapes = _shapes(1, 1, vcfg.merge_unit if with_vision else 0, vcfg)
    return _assemble({n: sharding_lib.batch_sharding(mesh, rules, len(shapes[n][0]), _batch_axis(n)) for n in shapes})


def _shapes(b: int, n: int, p: int, vcfg: VisionConfig,
            image_patches: int = 0) -> dict[str, tuple[tuple[int, ...], Any]]:
    """(shape, dtype) of every field of a batch of `b` rows, `n` tokens and `p` patches (0: no vision fields)."""
    shapes: dict[str, tuple[tuple[int, ...], Any]] = {
        "input_ids": ((b, n), jnp.int32),
        "targets": ((b, n), jnp.int32),
        "loss_mask": ((b, n), jnp.float32),
        "segment_ids": ((b, n), jnp.int32),
        "positions": ((3, b, n), jnp.int32),
    }
    if p:
        shapes["pixel_values"] = ((b, p, vcfg.patch_dim), jnp.float32)
        for name, value in row_layout(np.zeros((0, 3)), vcfg, p, image_patches).items():
            shapes[name] = ((b, *value.shape), value.dtype)
    return shapes


def abstract_train_batch(
    global_batch_size: int,
    seq_len: int,
    max_patches: int,
    vcfg: VisionConfig = _QWEN2_5_VISION,
    mesh: Mesh | None = None,
    rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES,
    image_patches: int = 0,
) -> TrainBatch:
    """`jax.ShapeDtypeStruct`s of a global batch (with shardings when a mesh is given), for AOT compiling.

    Args:
      global_batch_size: rows in the global batch.
      seq_len: tokens per row.
      max_patches: patches per row (0: text only).
      vcfg: the vision tower (patch size, and the family's layout fields).
      mesh: the mesh, for shardings.
      rules: logical-to-mesh rules.
      image_patches: the most patches of one image frame, as the data path has it (`packing.pack_rows`).
    """
    shapes = _shapes(global_batch_size, seq_len, max_patches, vcfg, image_patches)

    def struct_of(name: str) -> jax.ShapeDtypeStruct:
        shape, dtype = shapes[name]
        spec = None if mesh is None else sharding_lib.batch_sharding(mesh, rules, len(shape), _batch_axis(name))
        return jax.ShapeDtypeStruct(shape, dtype, sharding=spec)

    return _assemble({name: struct_of(name) for name in shapes})
