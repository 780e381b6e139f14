"""Exact epochs: the steps of a run counted with the real decoder and packer, before training.

Two passes, each cached beside the shards (`<data_dir>/epoch_counts/`, or `<workdir>/epoch_counts/` when
the data folder is read-only):

1. Lengths (`record_lengths`): every record of a source decoded once by the real `ExampleDecoder`, kept
   as its packed length (tokens after the overlong policy), its vision patches, or skipped. Keyed by the
   manifest's entries of the source's shards (path, records, size, SHA-256), or for a TFDS dataset folder by
   its split's files (name, records, size, modification time: TFDS records no checksum; a copy that does not
   keep modification times is counted again), and the fields that change a length (`LENGTH_FIELDS`, the
   vision merge size, the image token id).
2. Plan (`count_plan`): the real `RowPacker` replayed over each data shard's stream, the very keys training
   decodes (`pipeline.StreamKeys`, vectorised) with the lengths looked up instead: rows per shard, optimizer steps,
   the step by which each epoch has been trained, and the realised mixture. Keyed additionally by the
   mixture weights, epochs, seed, packing, the shard count and the batch split.

Steps = ceil(max over shards of rows / (rows per shard per micro-batch x micro-batches per step)): a
shard that runs out early gives empty rows (`shards.ShardedIterator`), the last batch is padded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grain
import numpy as np
from tqdm import tqdm

from data_pipeline.writer import listed_files
from octomed_jax.data.config import DataConfig
from octomed_jax.data.examples import ExampleDecoder, Skipped
from octomed_jax.data.packing import RowPacker
from octomed_jax.data.pipeline import (
    ShardSource,
    StreamKeys,
    TfdsSource,
    WeightedRecords,
    _absl_flags_parsed,
    data_format,
    example_cache,
    open_sources,
    source_seed,
    tfds_split_files,
)

if TYPE_CHECKING:
    from octomed_jax.models.config import ModelConfig

log = logging.getLogger(__name__)

CACHE_DIR = "epoch_counts"
# 2: NumPy stream keys (`pipeline.StreamKeys`): another order than version 1 counted. 3: an epoch ends where the
# stream passes it (`DataPlan.epoch_end_steps`), not where its last straggler leaves the packer.
VERSION = 3
# DataConfig fields that change a record's packed length (or whether it is skipped).
LENGTH_FIELDS = ("seq_len", "max_patches", "overlong", "min_pixels", "max_pixels", "system_prompt", "instruction",
                 "tokenizer_path", "image_root")
# ... and those that change the order or packing of the stream.
PLAN_FIELDS = ("sources", "epochs", "seed", "packing", "max_open_rows")


@dataclasses.dataclass(frozen=True)
class Lengths:
    """One source's records as the packer sees them.

    Attributes:
      tokens: int32 [records]: packed length; 0 for a skipped record.
      patches: int32 [records]: vision patches.
      skipped: reason -> records skipped (each record once).
    """

    tokens: np.ndarray
    patches: np.ndarray
    skipped: dict[str, int]


@dataclasses.dataclass(frozen=True)
class DataPlan:
    """The counted run.

    Attributes:
      steps: optimizer steps until every data shard has run out (when `complete`), else the steps replayed.
      epoch_end_steps: per epoch e (1-based order), the step by which the stream has passed epochs 1..e: every
        row closed before the packer took the first example of epoch e + 1 has been trained, so every example of
        epochs 1..e but those still in its open rows (at most `data.max_open_rows` partly filled rows per data
        shard, trained soon after). Not where the last of those leaves the packer: "close the fullest row" can
        keep a row that nothing fits open for epochs (the demo's uniform text examples did: epoch 1 of 3 "ended"
        at step 196 of 199). Only the epochs that end within the replayed steps.
      rows_per_shard: packed rows of each data shard (up to the replay's limit).
      rows_per_step: rows of one data shard per optimizer step (per micro-batch x micro-batches).
      complete: False when the replay stopped at `max_steps` before the data ran out.
      mixture: the realised mixture of the whole run (see `mixture`).
      key: the cache key.
    """

    steps: int
    epoch_end_steps: tuple[int, ...]
    rows_per_shard: tuple[int, ...]
    rows_per_step: int
    complete: bool
    mixture: dict[str, Any]
    key: str

    def steps_of(self, shards: Sequence[int]) -> int:
        """Steps until the given data shards (a process's) have all run out."""
        return max(math.ceil(self.rows_per_shard[s] / self.rows_per_step) for s in shards)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataPlan:
        return cls(**{**d, "epoch_end_steps": tuple(d["epoch_end_steps"]),
                      "rows_per_shard": tuple(d["rows_per_shard"])})


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:24]


def _length_key(cfg: DataConfig, model_cfg: ModelConfig, source: str) -> dict[str, Any]:
    fields = {k: getattr(cfg, k) for k in LENGTH_FIELDS}
    return {"version": VERSION, "source": source, "files": _files_key(cfg.data_dir, source), **fields,
            "merge_size": model_cfg.vision.spatial_merge_size, "image_token_id": model_cfg.image_token_id,
            "patch_size": model_cfg.vision.patch_size}  # Qwen3-VL's 16-pixel patches give other lengths


def _files_key(data_dir: str, source: str) -> list[list[Any]]:
    """The identity of a source's files: the manifest's (name, records, size, SHA-256) of each shard, or for a TFDS
    split each file's (name, records, size, mtime) on disk."""
    if data_format(data_dir) == "tfds":
        stats = [(f, os.stat(f.path)) for f in tfds_split_files(data_dir, source)]
        return [[os.path.basename(f.path), f.records, st.st_size, st.st_mtime_ns] for f, st in stats]
    return [[os.path.basename(f.path), f.records, f.size, f.sha256] for f in listed_files(data_dir, source)]


def _cache_dirs(cfg: DataConfig, workdir: str | None) -> list[str]:
    dirs = [os.path.join(cfg.data_dir, CACHE_DIR)]
    return dirs + [os.path.join(workdir, CACHE_DIR)] if workdir else dirs


def _find(dirs: Sequence[str], name: str) -> str | None:
    return next((p for p in (os.path.join(d, name) for d in dirs) if os.path.exists(p)), None)


def _store(dirs: Sequence[str], name: str, data: bytes) -> str | None:
    """Writes `data` atomically into the first writable folder of `dirs`; None (with a warning) when none is."""
    for d in dirs:
        path = os.path.join(d, name)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            os.makedirs(d, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            return path
        except OSError as e:
            log.info("cannot cache %s in %s (%s)", name, d, e)
    log.warning("epoch counts not cached: none of %s is writable; the next run counts again", list(dirs))
    return None


class _Measure:
    """The map `(index, record) -> (tokens, patches, skip reason)` through the real decoder; with `cache`
    (`pipeline.example_cache`) the decoded records are kept for training to read."""

    def __init__(self, decoder: ExampleDecoder, cache: dict[int, Any] | None = None):
        self.decoder = decoder
        self.cache = cache

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "cache": None}  # a worker process's decodes would not reach this process

    def __call__(self, index: int, record: bytes) -> tuple[int, int, str]:
        item = self.cache.get(index) if self.cache is not None else None
        if item is None:
            item = self.decoder(index, record)
            if self.cache is not None:
                self.cache[index] = item
        if isinstance(item, Skipped):
            return 0, 0, item.reason
        return len(item), item.num_patches, ""


def _measure(cfg: DataConfig, model_cfg: ModelConfig, source: str, records: ShardSource | TfdsSource,
             progress: bool) -> Lengths:
    measure = _Measure(ExampleDecoder(source, cfg, model_cfg), example_cache(cfg, model_cfg, source))
    ds: Any = grain.MapDataset.source(records).map_with_index(measure)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads,
                                              prefetch_buffer_size=cfg.worker_buffer_size))
    if cfg.num_workers > 0:
        _absl_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers,
                                                         per_worker_buffer_size=cfg.worker_buffer_size))
    n = len(records)
    tokens, patches = np.zeros(n, np.int32), np.zeros(n, np.int32)
    skipped: dict[str, int] = {}
    for i, (t, p, reason) in enumerate(tqdm(ds, total=n, desc=f"lengths {source}", disable=not progress)):
        tokens[i], patches[i] = t, p
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
    return Lengths(tokens, patches, dict(sorted(skipped.items())))


def record_lengths(cfg: DataConfig, model_cfg: ModelConfig, source: str, records: ShardSource | TfdsSource, *,
                   workdir: str | None = None, progress: bool = True) -> Lengths:
    """The packed length and patches of every record of `source` (cached; see the module docstring).

    Args:
      cfg: the data config.
      model_cfg: the student's config.
      source: a source of `cfg.sources`.
      records: its opened shards (`pipeline.open_sources`).
      workdir: the fallback cache folder when the data folder is read-only.
      progress: show a progress bar while decoding.
    """
    dirs = _cache_dirs(cfg, workdir)
    name = f"lengths-{source}-{_digest(_length_key(cfg, model_cfg, source))}.npz"
    path = _find(dirs, name)
    if path is not None:
        with np.load(path) as z:
            return Lengths(z["tokens"], z["patches"], json.loads(str(z["skipped"])))
    lengths = _measure(cfg, model_cfg, source, records, progress)
    buf = io.BytesIO()
    np.savez(buf, tokens=lengths.tokens, patches=lengths.patches, skipped=np.asarray(json.dumps(lengths.skipped)))
    _store(dirs, name, buf.getvalue())
    return lengths


def mixture(cfg: DataConfig, lengths: Mapping[str, Lengths]) -> dict[str, Any]:
    """The realised mixture of the run (`cfg.epochs` epochs): examples, tokens and patches per source and
    per kind (image-text: an example with patches; text), and each kind's share of examples and tokens."""
    per_source, kinds = {}, {"image-text": [0, 0, 0], "text": [0, 0, 0]}
    for source, weight in cfg.sources.items():
        ln = lengths[source]
        copies = WeightedRecords(len(ln.tokens), float(weight), source_seed(cfg.seed, source)).copies()
        copies *= cfg.epochs
        used = ln.tokens > 0
        image = used & (ln.patches > 0)
        entry = {"weight": float(weight), "examples": int(copies[used].sum()),
                 "tokens": int((copies * ln.tokens).sum()), "patches": int((copies * ln.patches).sum()),
                 "image_text_examples": int(copies[image].sum()),
                 "skipped_per_epoch": {r: n for r, n in ln.skipped.items()}}
        per_source[source] = entry
        for kind, mask in (("image-text", image), ("text", used & ~image)):
            acc = kinds[kind]
            acc[0] += int(copies[mask].sum())
            acc[1] += int((copies[mask] * ln.tokens[mask]).sum())
            acc[2] += int((copies[mask] * ln.patches[mask]).sum())
    examples = sum(k[0] for k in kinds.values()) or 1
    tokens = sum(k[1] for k in kinds.values()) or 1
    return {
        "epochs": cfg.epochs,
        "sources": per_source,
        "categories": {k: {"examples": e, "tokens": t, "patches": p, "example_share": round(e / examples, 6),
                           "token_share": round(t / tokens, 6)} for k, (e, t, p) in kinds.items()},
    }


def _replay(cfg: DataConfig, keys: StreamKeys, lengths: Sequence[Lengths], max_rows: int | None,
            ) -> tuple[int, list[int | None], bool]:
    """Packs one shard's stream by length only: (rows, per epoch the rows closed when the stream passed it or None
    when it has not, complete)."""
    positions, records, epochs = keys.arrays()
    offsets = np.cumsum([0] + [len(ln.tokens) for ln in lengths])[:-1]
    flat = offsets[positions] + records  # one lookup for every stream element, all sources at once
    tokens = np.concatenate([ln.tokens for ln in lengths])[flat]
    patches = np.concatenate([ln.patches for ln in lengths])[flat]
    used = np.flatnonzero(tokens > 0)  # skipped records take no room
    packer: RowPacker[int] = RowPacker(cfg.seq_len, cfg.max_patches, cfg.packing, cfg.max_open_rows)
    passed: list[int | None] = [None] * cfg.epochs
    rows, current = 0, 0
    for epoch, t, p in zip(epochs[used].tolist(), tokens[used].tolist(), patches[used].tolist(), strict=True):
        if max_rows is not None and rows >= max_rows:
            return rows, passed, False
        for e in range(current, epoch):  # the stream passes epochs in order
            passed[e] = rows
        current = epoch
        rows += len(packer.add(epoch, t, p))
    rows += len(packer.flush())
    return rows, [rows if x is None else x for x in passed], True


def count_plan(
    cfg: DataConfig,
    model_cfg: ModelConfig,
    *,
    num_shards: int,
    rows_per_micro_batch: int,
    micro_steps: int,
    max_steps: int | None = None,
    workdir: str | None = None,
    progress: bool = True,
) -> DataPlan:
    """Counts the run: lengths (cached per source), then the packer replayed over every data shard (cached).

    Args:
      cfg: the data config (its `batch_size` is ignored: see `rows_per_micro_batch`).
      model_cfg: the student's config.
      num_shards: the run's data shards.
      rows_per_micro_batch: rows of one data shard per micro-batch.
      micro_steps: micro-batches per optimizer step.
      max_steps: stop replaying once every shard has this many steps of rows (a run of fixed length).
      workdir: the fallback cache folder when the data folder is read-only.
      progress: progress bars for the length pass.

    Returns:
      The `DataPlan`; a summary is logged.
    """
    records = open_sources(cfg)
    lengths = {s: record_lengths(cfg, model_cfg, s, r, workdir=workdir, progress=progress)
               for s, r in zip(cfg.sources, records, strict=True)}
    rows_per_step = rows_per_micro_batch * micro_steps
    key = _digest({
        "version": VERSION,
        "lengths": [_length_key(cfg, model_cfg, s) for s in cfg.sources],
        "plan": {k: cfg.fingerprint()[k] for k in PLAN_FIELDS},
        "num_shards": num_shards, "rows_per_micro_batch": rows_per_micro_batch, "micro_steps": micro_steps,
        "max_steps": max_steps,
    })
    dirs = _cache_dirs(cfg, workdir)
    name = f"plan-{key}.json"
    path = _find(dirs, name)
    if path is not None:
        with open(path) as f:
            plan = DataPlan.from_dict(json.load(f))
    else:
        plan = _count(cfg, [lengths[s] for s in cfg.sources], [len(r) for r in records], num_shards,
                      rows_per_step, max_steps, mixture(cfg, lengths), key)
        _store(dirs, name, json.dumps(plan.to_dict(), indent=2, sort_keys=True).encode())
    cats = plan.mixture["categories"]
    log.info(
        "data plan: %d steps (%s), epochs end at steps %s; rows per shard %s; %s image-text / %s text examples "
        "(%.1f%% / %.1f%% of examples, %.1f%% / %.1f%% of tokens)",
        plan.steps, "counted" if plan.complete else f"replayed up to max_steps={max_steps}",
        list(plan.epoch_end_steps), list(plan.rows_per_shard), cats["image-text"]["examples"],
        cats["text"]["examples"], 100 * cats["image-text"]["example_share"], 100 * cats["text"]["example_share"],
        100 * cats["image-text"]["token_share"], 100 * cats["text"]["token_share"],
    )
    return plan


def _count(cfg: DataConfig, lengths: Sequence[Lengths], sizes: Sequence[int], num_shards: int, rows_per_step: int,
           max_steps: int | None, mix: dict[str, Any], key: str) -> DataPlan:
    max_rows = max_steps * rows_per_step if max_steps is not None else None
    rows, ends, complete = [], [], True
    for shard in range(num_shards):
        n, last, done = _replay(cfg, StreamKeys(cfg, sizes, shard, num_shards), lengths, max_rows)
        rows.append(n)
        ends.append(last)
        complete &= done
    steps = math.ceil(max(rows) / rows_per_step)
    epoch_end_steps: list[int] = []
    for e in range(cfg.epochs):
        per_shard = [shard_ends[e] for shard_ends in ends]
        if any(x is None for x in per_shard):
            break
        step = max(1, *(math.ceil(x / rows_per_step) for x in per_shard))  # the step holding the last row closed
        epoch_end_steps.append(max([step, *epoch_end_steps]))
    return DataPlan(steps, tuple(epoch_end_steps), tuple(rows), rows_per_step, complete, mix, key)


__all__ = ["CACHE_DIR", "DataPlan", "Lengths", "count_plan", "mixture", "record_lengths"]
