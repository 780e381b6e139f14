"""Training checkpoints: model, optimizer, step, RNG, data-iterator state and the run contract, with Orbax.

A step folder `checkpoints/<step>/` holds the items `state` (params, optimizer, RNG), `data` (the
iterator's position) and `contract` (the run contract as JSON, `octomed_jax.contract`), so any step can be
exported, evaluated and served on its own (`octomed_jax.checkpoint.load_run`).

Saved every N steps and at the end, asynchronously (the step loop continues while the previous save is
written), keeping the last K. A checkpoint directory is complete or absent: Orbax writes to a temporary
name and renames it on success, so a run killed mid-save resumes from the previous complete one.
Restoring passes `jax.ShapeDtypeStruct` targets that carry the current shardings, so a checkpoint from
one mesh restores onto another.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint._src.metadata import array_metadata_store
from orbax.checkpoint._src.serialization import type_handler_registry

from octomed_jax.checkpoint import CONTRACT_ITEM, STATE_ITEM, CheckpointError
from octomed_jax.contract import RunContract
from octomed_jax.data import checkpointing as data_ckpt

# Replica-parallel saving splits the write of each replicated array across its replicas: worth it for a large
# array, but every slice is a device op, compiled once per shape, and a model has hundreds of small norm scales
# and biases (the tiny 8-device test runs spent ~15 s of a 65 s run slicing them). Arrays whose per-replica
# slice is under this size are written by one replica.
MIN_REPLICA_SLICE_BYTES = 4 << 20


def _register_array_handler() -> None:
    """Orbax's jax.Array handler (as its default, with its metadata store), replica-parallel for large slices only."""
    handler = ocp.type_handlers.ArrayHandler(array_metadata_store=array_metadata_store.Store(),
                                             min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES)
    # `type_handler_registry.add`, not `register_type_handler`: the override is meant, so no warning at each start.
    type_handler_registry.GLOBAL_TYPE_HANDLER_REGISTRY.add(jax.Array, handler, override=True, ignore_warnings=True)


_register_array_handler()


def make_manager(directory: str, *, save_every: int, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_every,
        max_to_keep=keep,
        enable_async_checkpointing=async_save,
        create=True,
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def train_state(model: nnx.Module, optimizer: nnx.Optimizer, rng: jax.Array) -> dict[str, Any]:
    """The array tree that a checkpoint stores (pure dicts; the step is in the checkpoint's name)."""
    return {
        "params": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
        "optimizer": nnx.to_pure_dict(nnx.state(optimizer)),
        # A host-local NumPy array: every process holds the same key, and a single-device jax.Array
        # cannot be written from several hosts.
        "rng": np.asarray(jax.random.key_data(rng)),
    }


def save(
    manager: ocp.CheckpointManager,
    step: int,
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    rng: jax.Array,
    data_iterator: grain.DatasetIterator | None,
    contract: RunContract,
    *,
    force: bool = False,
) -> bool:
    """Saves (asynchronously) if `step` is due or `force`; returns whether a save started."""
    items = {
        STATE_ITEM: ocp.args.StandardSave(train_state(model, optimizer, rng)),
        CONTRACT_ITEM: ocp.args.JsonSave(contract.to_dict()),
    }
    args = data_ckpt.save_args(data_iterator, **items) if data_iterator else ocp.args.Composite(**items)
    return manager.save(step, args=args, force=force)


def restore_latest(
    manager: ocp.CheckpointManager,
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    rng: jax.Array,
    data_iterator: grain.DatasetIterator | None,
) -> tuple[int, jax.Array] | None:
    """Restores the latest checkpoint in place (model, optimizer, iterator); returns (step, rng) or None."""
    step = manager.latest_step()
    if step is None:
        return None
    current = train_state(model, optimizer, rng)
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) if isinstance(x, jax.Array) else x,
        current,
    )
    items = {STATE_ITEM: ocp.args.StandardRestore(target)}
    args = data_ckpt.restore_args(data_iterator, **items) if data_iterator else ocp.args.Composite(**items)
    try:
        restored = manager.restore(step, args=args)
    except (ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"{os.path.join(manager.directory, str(step))}: cannot restore step {step}: {e}") from e
    state = restored[STATE_ITEM]
    params = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(params, state["params"])
    nnx.update(model, params)
    opt_state = nnx.state(optimizer)
    nnx.replace_by_pure_dict(opt_state, state["optimizer"])
    nnx.update(optimizer, opt_state)
    return step, jax.random.wrap_key_data(np.asarray(state["rng"]))
