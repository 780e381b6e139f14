"""Training checkpoints: model, optimizer, step, RNG and data-iterator state, with Orbax.

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

from octomed_jax.data import checkpointing as data_ckpt


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
    *,
    force: bool = False,
) -> bool:
    """Saves (asynchronously) if `step` is due or `force`; returns whether a save started."""
    state = ocp.args.StandardSave(train_state(model, optimizer, rng))
    args = data_ckpt.save_args(data_iterator, state=state) if data_iterator else ocp.args.Composite(state=state)
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
    state = ocp.args.StandardRestore(target)
    args = data_ckpt.restore_args(data_iterator, state=state) if data_iterator else ocp.args.Composite(state=state)
    restored = manager.restore(step, args=args)
    state = restored["state"]
    params = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(params, state["params"])
    nnx.update(model, params)
    opt_state = nnx.state(optimizer)
    nnx.replace_by_pure_dict(opt_state, state["optimizer"])
    nnx.update(optimizer, opt_state)
    return step, jax.random.wrap_key_data(np.asarray(state["rng"]))
