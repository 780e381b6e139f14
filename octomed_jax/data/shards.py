"""Data shards independent of the number of hosts, so a run reads the same global batches on any topology.

The records are split into `num_shards` fixed shards (`make_iterator` with process index = shard); each
process reads the shards `[p * S / P, (p + 1) * S / P)` and stacks their rows. With the shard count fixed
by the config, one process with 4 devices and two processes with 2 each train on identical global
batches, and a checkpoint can resume on another process count. Shards end at different batches (their
rows differ); one that has run out gives empty rows (no loss tokens) until every shard has.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from octomed_jax.data.config import DataConfig
from octomed_jax.data.pipeline import make_iterator
from octomed_jax.models.config import ModelConfig


class ShardedIterator(grain.DatasetIterator):
    """This process's data shards, one packed iterator each; a batch stacks their rows in shard order."""

    def __init__(self, cfg: DataConfig, model_cfg: ModelConfig, num_shards: int, process_index: int,
                 process_count: int):
        """Creates the iterators of this process's shards.

        Args:
          cfg: data config; `cfg.batch_size` is the rows per process (split evenly over its shards).
          model_cfg: the student's config.
          num_shards: fixed number of data shards of the run (a multiple of `process_count`).
          process_index, process_count: this process and the number of processes.
        """
        super().__init__()
        if num_shards % process_count:
            raise ValueError(f"data shards {num_shards} do not split over {process_count} processes")
        per_process = num_shards // process_count
        if cfg.batch_size % per_process:
            raise ValueError(f"{cfg.batch_size} rows per process do not split over its {per_process} data shards")
        shard_cfg = cfg.replace(batch_size=cfg.batch_size // per_process)
        self.shards = list(range(process_index * per_process, (process_index + 1) * per_process))
        self._iterators = [
            make_iterator(shard_cfg, model_cfg, process_index=s, process_count=num_shards) for s in self.shards
        ]

    def __next__(self) -> dict[str, np.ndarray]:
        """The next batch; a shard that has run out gives empty rows until all of them have (StopIteration)."""
        batches, live = [], False
        for it in self._iterators:
            try:
                batches.append(next(it))
                live = True
            except StopIteration:
                batches.append(it.empty_batch())
        if not live:
            raise StopIteration
        if len(batches) == 1:
            return batches[0]  # one shard per process: no copy (~10 ms a demo batch)
        return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

    def empty_batch(self) -> dict[str, np.ndarray]:
        """A batch of empty rows (no loss tokens), of this iterator's shapes."""
        batches = [it.empty_batch() for it in self._iterators]
        return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

    def get_state(self) -> dict[str, Any]:
        return {"shards": {str(s): it.get_state() for s, it in zip(self.shards, self._iterators, strict=True)}}

    def set_state(self, state: dict[str, Any]) -> None:
        saved = state["shards"]
        missing = [s for s in self.shards if str(s) not in saved]
        if missing:
            raise ValueError(f"the data state has no position for shards {missing} (saved: {sorted(saved)})")
        for s, it in zip(self.shards, self._iterators, strict=True):
            it.set_state(saved[str(s)])

    def counts(self) -> dict[str, Any]:
        return {str(s): it.counts() for s, it in zip(self.shards, self._iterators, strict=True)}

    def close(self) -> None:
        for it in self._iterators:
            it.close()
