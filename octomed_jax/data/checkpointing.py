"""The data iterator's state inside the trainer's Orbax checkpoint.

The iterator is one item of an `ocp.CheckpointManager` composite (`DataSave` / `DataRestore`: Grain's
handler, one JSON file `process_<i>-of-<n>.json` per process), saved at the same step as the model state:

    manager = ocp.CheckpointManager(directory)
    manager.save(step, args=save_args(iterator, state=ocp.args.StandardSave(train_state)))
    restored = manager.restore(step, args=restore_args(iterator, state=ocp.args.StandardRestore(abstract)))
    # `iterator` now yields the batch after the one trained at `step`; restored["state"] is the train state.

A damaged, missing or mismatched state file raises `DataStateError` naming the file and saying what to do.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import grain
import orbax.checkpoint as ocp
from etils import epath

DATA_ITEM = "data"


class DataStateError(ValueError):
    """The data iterator's state file in a checkpoint cannot be restored; the message names the file."""


def _state_file(directory: epath.Path) -> epath.Path:
    """This process's state file in the data item's folder (Grain's name for it)."""
    import jax

    return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"


class DataStateHandler(grain.checkpoint.CheckpointHandler):
    """Grain's checkpoint handler for `DatasetIterator`s whose restore errors name the state file."""

    def save(self, directory: epath.Path, item: Any = None, args: Any = None) -> None:
        item = item or args.item
        _state_file(directory).write_text(json.dumps(item.get_state(), indent=4))

    def restore(self, directory: epath.Path, item: Any = None, args: Any = None) -> Any:
        """Sets `item` to the saved state.

        Raises:
          DataStateError: the file is missing, not JSON, or a state this iterator refuses (names the file).
        """
        item = item or args.item
        path = _state_file(directory)
        earlier = f"delete the step folder {os.path.dirname(os.fspath(directory))} to resume from an earlier step"
        try:
            text = path.read_text()
        except FileNotFoundError:
            saved = sorted(p.name for p in directory.glob("process_*.json"))
            raise DataStateError(
                f"{path}: no data-iterator state for this process (the checkpoint has {saved}): resume with the "
                f"process count it was saved with, or {earlier}"
            ) from None
        try:
            state = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataStateError(f"{path}: the data-iterator state is not valid JSON ({e}): {earlier}") from None
        try:
            item.set_state(state)
        except (ValueError, KeyError, TypeError) as e:
            raise DataStateError(
                f"{path}: the data iterator refuses this state ({type(e).__name__}: {e}): restore with the data "
                f"config it was saved with, or {earlier}"
            ) from e
        item.start_prefetch()
        return item


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
    """Saves a Grain iterator's state (`get_state`, JSON) as a checkpoint item."""

    item: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
    """Restores a Grain iterator in place (`set_state`) from a checkpoint item."""

    item: Any


def save_args(iterator: grain.DatasetIterator, **items: ocp.args.CheckpointArgs) -> ocp.args.Composite:
    """Composite save args: the iterator's state under "data", plus the caller's other items."""
    if DATA_ITEM in items:
        raise ValueError(f"the item name {DATA_ITEM!r} is reserved for the data iterator")
    return ocp.args.Composite(**{DATA_ITEM: DataSave(iterator)}, **items)


def restore_args(iterator: grain.DatasetIterator, **items: ocp.args.CheckpointArgs) -> ocp.args.Composite:
    """Composite restore args: `iterator` is set to the saved state in place, plus the caller's items."""
    if DATA_ITEM in items:
        raise ValueError(f"the item name {DATA_ITEM!r} is reserved for the data iterator")
    return ocp.args.Composite(**{DATA_ITEM: DataRestore(iterator)}, **items)


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
