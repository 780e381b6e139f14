"""The data iterator's state inside the trainer's Orbax checkpoint.

The iterator is one item of an `ocp.CheckpointManager` composite (`grain.checkpoint.CheckpointSave` /
`CheckpointRestore`, one JSON file per process), saved at the same step as the model state:

    manager = ocp.CheckpointManager(directory)
    manager.save(step, args=save_args(iterator, state=ocp.args.StandardSave(train_state)))
    restored = manager.restore(step, args=restore_args(iterator, state=ocp.args.StandardRestore(abstract)))
    # `iterator` now yields the batch after the one trained at `step`; restored["state"] is the train state.
"""

from __future__ import annotations

from typing import Any

import grain
import orbax.checkpoint as ocp

DATA_ITEM = "data"


def save_args(iterator: grain.DatasetIterator, **items: ocp.args.CheckpointArgs) -> ocp.args.Composite:
    """Composite save args: the iterator's state under "data", plus the caller's other items."""
    if DATA_ITEM in items:
        raise ValueError(f"the item name {DATA_ITEM!r} is reserved for the data iterator")
    return ocp.args.Composite(**{DATA_ITEM: grain.checkpoint.CheckpointSave(iterator)}, **items)


def restore_args(iterator: grain.DatasetIterator, **items: ocp.args.CheckpointArgs) -> ocp.args.Composite:
    """Composite restore args: `iterator` is set to the saved state in place, plus the caller's items."""
    if DATA_ITEM in items:
        raise ValueError(f"the item name {DATA_ITEM!r} is reserved for the data iterator")
    return ocp.args.Composite(**{DATA_ITEM: grain.checkpoint.CheckpointRestore(iterator)}, **items)


def save(
    manager: ocp.CheckpointManager, step: int, iterator: grain.DatasetIterator, **items: ocp.args.CheckpointArgs
) -> bool:
    """`manager.save(step, ...)` with the iterator's state; returns whether a checkpoint was saved."""
    return manager.save(step, args=save_args(iterator, **items))


def restore(
    manager: ocp.CheckpointManager,
    iterator: grain.DatasetIterator,
    step: int | None = None,
    **items: ocp.args.CheckpointArgs,
) -> Any:
    """Restores `iterator` in place (and the other items) from `step`, default the latest.

    Returns:
      The restored composite (`result["data"]` is the iterator, other items by name).

    Raises:
      FileNotFoundError: the manager has no checkpoint.
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {manager.directory}")
    return manager.restore(step, args=restore_args(iterator, **items))
