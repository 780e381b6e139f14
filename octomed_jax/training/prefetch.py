"""Training inputs prepared in the background: the next steps' batches read, packed and placed on the devices
while the current step runs.

`Prefetcher` runs one thread that takes each step's micro-batches from the data iterator, stacks them and
places them as one global batch, and keeps at most `depth` ready steps queued. The iterator therefore runs
ahead of training, so the position a checkpoint saves is not the iterator's own: every prepared step carries
the iterator state after its batches, and `Prefetcher.get_state` is the state after the last step handed
out, i.e. the batches the finished steps consumed. The trainer passes the prefetcher, not the iterator, to
the checkpoint, and a resumed run reads exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from octomed_jax.data.shards import ShardedIterator

_DONE = object()  # the producer prepared every step it was asked for


@dataclasses.dataclass(frozen=True)
class StepInput:
    """One step's input, ready on the devices.

    Attributes:
      batch: the global batch (micro-batches on a leading axis), as `place` returned it.
      state: the data iterator's state after this step's batches: its position once the step has trained.
      read_data: whether this process read data for the step (False: all its shards had run out, empty rows).
      patches: real image patches in this process's batches of the step (for FLOPs).
    """

    batch: Any
    state: dict[str, Any]
    read_data: bool
    patches: int


class Prefetcher(Iterator[StepInput]):
    """Yields `StepInput`s for `steps` steps, prepared up to `depth` steps ahead in a background thread."""

    def __init__(self, iterator: ShardedIterator, place: Callable[[Sequence[Mapping[str, np.ndarray]]], Any],
                 micro_steps: int, steps: int, depth: int = 2):
        """Starts preparing steps (the thread starts here when `depth` > 0).

        Args:
          iterator: the data iterator at the run's position (restored); from now on only this object reads it.
          place: one step's host micro-batches -> the global batch on the devices (e.g.
            `to_global_micro_batches` with the mesh).
          micro_steps: micro-batches per step.
          steps: steps to prepare (the rest of the run): the iterator is never read past them, so after the
            last one it stands where the run ends.
          depth: ready steps queued ahead of the one training; 0 prepares each step when asked, in the
            caller's thread (no overlap, the reference the background path must equal).
        """
        self._iterator, self._place, self._micro_steps = iterator, place, micro_steps
        self._remaining = steps
        self._state = iterator.get_state()  # the consumed position: nothing handed out yet
        self.wait_seconds = 0.0  # total time `__next__` blocked waiting for a step (the input wait)
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._produce, name="octomed-prefetch", daemon=True)
            self._thread.start()

    def _prepare(self) -> StepInput:
        """Reads, packs and places one step (the iterator's shards that ran out give empty rows)."""
        host, read = [], False
        for _ in range(self._micro_steps):
            try:
                host.append(next(self._iterator))
                read = True
            except StopIteration:  # other processes' shards still have rows: empty rows (no loss) here
                host.append(self._iterator.empty_batch())
        patches = sum(int((b["image_segment_ids"] > 0).sum()) for b in host if "image_segment_ids" in b)
        return StepInput(self._place(host), self._iterator.get_state(), read, patches)

    def _produce(self) -> None:
        try:
            for _ in range(self._remaining):
                if not self._put(self._prepare()):
                    return
            self._put(_DONE)
        except BaseException as e:  # noqa: BLE001 - re-raised in the training thread by __next__
            self._put(e)

    def _put(self, item: Any) -> bool:
        """Queues `item` unless `close` was called first; returns whether it was queued."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __next__(self) -> StepInput:
        """The next step's input; re-raises an error of the data thread; StopIteration after `steps` steps."""
        t0 = time.perf_counter()
        if self._thread is None:
            if self._remaining <= 0:
                raise StopIteration
            self._remaining -= 1
            item = self._prepare()
        else:
            item = self._queue.get()
        self.wait_seconds += time.perf_counter() - t0
        if item is _DONE:
            self._queue.put(_DONE)  # every later call stops too
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        self._state = item.state
        return item

    def get_state(self) -> dict[str, Any]:
        """The data position after the steps handed out so far (what a checkpoint after them must save)."""
        return self._state

    def close(self) -> None:
        """Stops the thread (a prepared step not handed out is dropped; the iterator may stand past it)."""
        self._remaining = 0
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
