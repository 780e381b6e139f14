"""The Grain input pipeline: ArrayRecord shards of accepted traces -> packed per-host numpy batches.

One epoch is every source's weighted records concatenated (`WeightedRecords`: a source of weight 2 twice,
of weight 0.5 a seeded half, the same half every epoch), over exactly the shards `manifest.json` lists,
checked first against their recorded sizes and SHA-256 (`data_pipeline.writer.verify_source`: a missing,
changed or unlisted shard file stops the run with an error naming it). Each epoch is permuted with its own
seeded NumPy permutation, the epochs follow each other, and data shard s of S reads every S-th element from
s (`StreamKeys`), so every accepted trace is seen exactly `epochs` x weight times over the data shards, and
each record is decoded and tokenised by `ExampleDecoder` when read (lazily, with its record index).
`octomed_jax.data.epochs` replays the same keys (`StreamKeys.arrays`, vectorised) with lengths only, to
count the steps.

`data_dir` may also be a TFDS dataset folder of a build (`python -m data_pipeline.tfds_dataset`:
`<tfds data_dir>/octomed_recipe/<recipe>/<version>/`, recognised by its `dataset_info.json`; `data_format`).
Each split is a source (`TfdsSource`), read in the shards' order, so the same config gives the same batches
from either. TFDS records no checksum: its files are checked for presence and record counts only
(`tfds_split_files`); the shards' SHA-256 were checked when the dataset was written.

The shard's stream is read in order, optionally by `mp_prefetch` worker processes (worker w
computes elements w, w+W, ...; Grain interleaves them back in order), then packed (`RowPacker`) and
batched in the main process. Because packing runs after the workers and the decoder is one-to-one
(bad records become `Skipped` markers rather than being filtered out), the rows do not depend on the
number of workers, and an iterator state restores exactly under any worker count: the state is the
next stream position plus the stream positions of the examples in the packer's open rows, which are
re-read by random access on restore.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import glob
import itertools
import logging
import math
import os
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import grain
import numpy as np

from data_pipeline.storage import ManifestError, StorageError, as_storage_error
from data_pipeline.writer import MANIFEST, ShardFile, read_json, verify_source, weighted_count
from octomed_jax.data.config import DataConfig
from octomed_jax.data.examples import Example, ExampleDecoder, Skipped, special_ids_for
from octomed_jax.data.packing import PackingStats, RowPacker, empty_batch, pack_rows

if TYPE_CHECKING:
    from octomed_jax.models.config import ModelConfig

log = logging.getLogger(__name__)

STATE_VERSION = 3  # 2: exact epochs (concatenated weighted epoch); 3: NumPy stream keys (`StreamKeys`)
_RECENT_SKIPS = 20  # skipped records remembered (source, index, reason) in the state and the error message
_LOGGED_SKIPS = 100  # skipped records logged one by one; then every 1000th


class DataErrorBudgetExceeded(RuntimeError):
    """More bad records than `DataConfig.error_budget` allows; the message names the last one's source and
    index and lists the recent ones."""


_REBUILD = "Rebuild the data with `python -m data_pipeline.build` (its stored completions are reused)."


def _shard_error(e: Exception, path: str, doing: str) -> StorageError:
    """`e` (an ArrayRecord / Riegeli error, which names no file) as a `StorageError` naming the shard."""
    return as_storage_error(e, path, doing, _REBUILD) or StorageError(f"{path}: cannot {doing}: {e}. {_REBUILD}", path)


class ShardSource:
    """Random access to the records of a source's listed shards; an open or read error names the shard.

    A Grain data source (`len`, `[i]`, picklable into worker processes) over `ArrayRecordDataSource`.
    """

    def __init__(self, files: Sequence[ShardFile]):
        """Opens the shards.

        Raises:
          ManifestError: a shard holds another number of records than the manifest says.
          StorageError: a shard cannot be opened (names it).
        """
        self._files = list(files)
        self._starts = list(itertools.accumulate((f.records for f in self._files), initial=0))
        try:
            self._source = grain.sources.ArrayRecordDataSource([f.path for f in self._files])
            opened = len(self._source)
        except Exception:
            self._check_each()  # raises naming the shard
            raise
        if opened != self._starts[-1]:
            self._check_each()

    def _check_each(self) -> None:
        """Opens each shard alone; raises naming the first that fails or holds another count than the manifest."""
        for f in self._files:
            try:
                n = len(grain.sources.ArrayRecordDataSource([f.path]))
            except Exception as e:
                raise _shard_error(e, f.path, "open the shard") from e
            if n != f.records:
                raise ManifestError(f"{f.path}: {n} records, the manifest says {f.records}: rebuild the data")

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> bytes:
        try:
            return self._source[index]
        except Exception as e:
            path, record = self.where(index)
            raise _shard_error(e, path, f"read record {record} of the shard") from e

    def read_many(self, indices: Sequence[int]) -> list[bytes]:
        """Records `indices` in one batched read (a failure is read again one by one, to name its shard)."""
        try:
            return self._source.__getitems__(list(indices))
        except Exception:
            return [self[i] for i in indices]

    def where(self, index: int) -> tuple[str, int]:
        """(the shard file holding record `index`, the record's index in that file)."""
        k = bisect.bisect_right(self._starts, index) - 1
        return self._files[k].path, index - self._starts[k]

    def __repr__(self) -> str:
        return f"ShardSource({[f.path for f in self._files]})"


TFDS_INFO = "dataset_info.json"  # what makes a folder a TFDS dataset (`data_pipeline.tfds_dataset` writes one)
DataFormat = Literal["shards", "tfds"]


def data_format(data_dir: str) -> DataFormat:
    """How `data_dir` holds its traces: "shards" (a `data_pipeline.build` output: `manifest.json`) or "tfds"
    (a TFDS dataset folder of one: `dataset_info.json`).

    A folder with neither is "shards" (reading it then fails naming its missing manifest), unless TFDS datasets lie
    below it (a TFDS `data_dir` given instead of a dataset's folder).

    Raises:
      ManifestError: the folder has neither file but TFDS datasets below it (names it and them).
    """
    if os.path.exists(os.path.join(data_dir, MANIFEST)):
        return "shards"
    if os.path.exists(os.path.join(data_dir, TFDS_INFO)):
        return "tfds"
    below = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(glob.escape(data_dir), "*", "*", "*", TFDS_INFO)))
    if below:
        raise ManifestError(
            f"{data_dir}: neither {MANIFEST} (a `python -m data_pipeline.build` output) nor {TFDS_INFO} (a TFDS "
            f"dataset's folder): point data.data_dir at one of the TFDS datasets below it: {below[:5]}"
        )
    return "shards"


def _tfds_info(folder: str) -> Any:
    """The `tfds.core.DatasetInfo` of a TFDS dataset folder (TensorFlow Datasets imported only here)."""
    import tensorflow_datasets as tfds

    try:
        return tfds.builder_from_directory(folder).info
    except Exception as e:
        raise ManifestError(f"{os.path.join(folder, TFDS_INFO)}: cannot read the TFDS dataset ({e}); write it again "
                            "with `python -m data_pipeline.tfds_dataset`") from e


def tfds_split_files(folder: str, split: str) -> list[ShardFile]:
    """The ArrayRecord files of `split` that `<folder>/dataset_info.json` lists, with their record counts.

    What can be checked is: every listed file is there and no other file of the split is (problems reported at
    once). TFDS records no checksum, and its `numBytes` counts serialized examples, not file bytes, so neither a
    SHA-256 nor a size can be compared (`DataConfig.verify_files` does not apply); the record counts
    (`shardLengths`) are compared when the files are opened (`ShardSource`).

    Raises:
      ManifestError: no such split, a listed file missing, or an unlisted file of the split (each named).
    """
    info = _tfds_info(folder)
    where = os.path.join(folder, TFDS_INFO)
    if split not in info.splits:
        raise ManifestError(f"{where} has no split {split!r} (it has {sorted(info.splits)}): fix data.sources")
    s = info.splits[split]
    files = [ShardFile(os.fspath(p), int(n), None, None) for p, n in zip(s.filepaths, s.shard_lengths, strict=True)]
    listed = {os.path.normpath(f.path) for f in files}
    on_disk = {os.path.normpath(p) for p in glob.glob(os.path.join(glob.escape(folder), f"{info.name}-{split}.*"))}
    problems = [f"{p}: listed in {where} but missing" for p in sorted(listed - on_disk)]
    problems += [f"{p}: a file of split {split!r} that {where} does not list" for p in sorted(on_disk - listed)]
    if problems:
        raise ManifestError("; ".join(problems) + ": write the TFDS dataset again (`python -m "
                            "data_pipeline.tfds_dataset`)")
    return files


# The features `data_pipeline.tfds_dataset` writes that training reads, and their tf.Example value lists.
_TFDS_FIELDS = {"trace": "bytes_list", "question_key": "bytes_list", "sample_index": "int64_list"}
_ORDER_CHUNK = 4096  # records per batched read of the order pass


class TfdsSource:
    """One split of a TFDS dataset of a build, as a Grain data source of AcceptedTrace bytes in the shards' order.

    Record i is `tfds.data_source(...)[split][j]["trace"]` for the example j of rank i by (question key, sample
    index): TFDS stores a split ordered by a hash of its keys; the build's shards are sorted by (question key,
    sample index), so this order makes the split read exactly as the source's shards do (the same weighted subsets,
    permutations and rows). The order is read once when opened: every example's key fields, one pass over the split
    (it reads the bytes, as the shards' SHA-256 check does: 0.9 s for 10,000 records of ~2 KB on a loaded 2-core box).
    """

    def __init__(self, folder: str, split: str):
        """Opens the split's files (`tfds_split_files`, record counts checked) and reads its order.

        Raises:
          ManifestError: see `tfds_split_files`; StorageError: a file cannot be read (names it).
        """
        self._records = ShardSource(tfds_split_files(folder, split))
        missing = sorted(set(_TFDS_FIELDS) - set(_tfds_info(folder).features.keys()))
        if missing:
            raise ManifestError(f"{os.path.join(folder, 'features.json')}: no features {missing}: not a dataset "
                                "of `python -m data_pipeline.tfds_dataset`")
        keys, samples = [], []
        for start in range(0, len(self), _ORDER_CHUNK):
            indices = range(start, min(start + _ORDER_CHUNK, len(self)))
            for i, data in zip(indices, self._records.read_many(indices), strict=True):
                key, sample = self._fields(i, data, "question_key", "sample_index")
                keys.append(key)
                samples.append(sample)
        self._order = np.lexsort((np.asarray(samples, np.int64), np.asarray(keys, np.bytes_)))

    def _fields(self, index: int, data: bytes, *names: str) -> list[Any]:
        """Fields of example `index` (TFDS's order) read from its tf.Example bytes: the values `tfds.data_source`
        decodes, without decoding the others (40x faster than its `deserialize_example_np`)."""
        from tensorflow_datasets.proto import tf_example_pb2

        try:
            feature = tf_example_pb2.Example.FromString(data).features.feature
            return [getattr(feature[n], _TFDS_FIELDS[n]).value[0] for n in names]
        except Exception as e:
            path, record = self._records.where(index)
            raise StorageError(f"{path}: cannot decode example {record} ({e!r}): write the TFDS dataset again "
                               "(`python -m data_pipeline.tfds_dataset`)", path) from e

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> bytes:
        j = int(self._order[index])
        return self._fields(j, self._records[j], "trace")[0]

    def __repr__(self) -> str:
        return f"TfdsSource({self._records!r})"


def built_sources(data_dir: str) -> dict[str, float]:
    """Every source with records in `<data_dir>/manifest.json`, at the weight its recipe gave it (manifest
    `mixture.sources.<s>.weight`; 1.0 for a manifest without one). For a TFDS dataset folder: its splits with
    examples, at the weights of the manifest's `mixture` that `data_pipeline.tfds_dataset` stored in its metadata.

    Raises:
      ManifestError: the manifest (or dataset) lists no source with records.
    """
    if data_format(data_dir) == "tfds":
        info = _tfds_info(data_dir)
        path, mixture = os.path.join(data_dir, TFDS_INFO), (info.metadata or {}).get("mixture", {})
        records = {s: split.num_examples for s, split in info.splits.items()}
    else:
        path = os.path.join(data_dir, MANIFEST)
        manifest = read_json(path, "manifest")
        mixture = manifest.get("mixture", {})
        records = {s: sum(e["records"] for e in entries) for s, entries in manifest["files"].items()}
    mixed = mixture.get("sources", {})
    out = {s: float(mixed.get(s, {}).get("weight", 1.0)) for s, n in sorted(records.items()) if n > 0}
    if not out:
        raise ManifestError(f"{path} lists no source with accepted traces: rebuild the data")
    return out


def source_seed(seed: int, source: str) -> int:
    """A per-source seed, stable across runs and Python processes (no `hash()`)."""
    return (seed * 1_000_003 + zlib.crc32(source.encode())) % (2**31 - 1)


class WeightedRecords:
    """One source's record indices for one epoch: every record `floor(weight)` times, then a seeded subset of
    `round(frac(weight) * n)` records (the same subset every epoch)."""

    def __init__(self, records: int, weight: float, seed: int):
        self.records = records
        self._whole = math.floor(weight)
        extra = weighted_count(records, weight) - self._whole * records
        self._extra = np.sort(np.random.default_rng(seed).permutation(records)[:extra]).astype(np.int64)

    def __len__(self) -> int:
        return self._whole * self.records + len(self._extra)

    def indices(self) -> np.ndarray:
        """int64 [len(self)]: the record of each position of the epoch (whole copies, then the subset)."""
        return np.concatenate([np.tile(np.arange(self.records, dtype=np.int64), self._whole), self._extra])

    def copies(self) -> np.ndarray:
        """int64 [records]: how many times each record appears in one epoch."""
        out = np.full(self.records, self._whole, np.int64)
        out[self._extra] += 1
        return out


class StreamKeys:
    """The `(position, record)` keys of one data shard in training order (a Grain source; NumPy inside).

    One epoch is every source's weighted records concatenated in config order (`position` = the source's place
    in `DataConfig.sources`); epoch e is that sequence permuted by `default_rng([seed, e])`; the run is the
    epochs one after another, and data shard s of S reads run elements s, s + S, s + 2S, ... Element k of the
    shard is therefore run element `s + k * S`, in epoch `(s + k * S) // epoch_len`. `arrays()` gives the
    whole stream at once (the counting pass); `[k]` one key (training).
    """

    def __init__(self, cfg: DataConfig, sizes: Sequence[int], shard: int, num_shards: int):
        if not 0 <= shard < num_shards:
            raise ValueError(f"data shard {shard} not in [0, {num_shards})")
        parts = [WeightedRecords(n, float(w), source_seed(cfg.seed, s))
                 for (s, w), n in zip(cfg.sources.items(), sizes, strict=True)]
        empty = [s for s, p in zip(cfg.sources, parts, strict=True) if len(p) == 0]
        if empty:
            raise ValueError(f"sources {empty} give no example per epoch (no records, or a weight too small for "
                             "their records): raise data.sources weights or leave them out")
        self._positions = np.concatenate([np.full(len(p), k, np.int32) for k, p in enumerate(parts)])
        self._records = np.concatenate([p.indices() for p in parts])
        self.epoch_len = len(self._records)
        self.epochs, self.seed, self.shard, self.num_shards = cfg.epochs, cfg.seed, shard, num_shards
        self._length = len(range(shard, self.epoch_len * self.epochs, num_shards))
        self._cached: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self._length

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.epoch_len))
        return self._cached[1]

    def __getitem__(self, k: int) -> tuple[int, int]:
        if not 0 <= k < self._length:
            raise IndexError(f"stream element {k} of {self._length}")
        epoch, i = divmod(self.shard + k * self.num_shards, self.epoch_len)
        j = self._permutation(epoch)[i]
        return int(self._positions[j]), int(self._records[j])

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions, records, epochs) of the whole shard stream, in order."""
        out: list[list[np.ndarray]] = [[], [], []]
        for epoch in range(self.epochs):
            first = (self.shard - epoch * self.epoch_len) % self.num_shards  # this shard's first element in it
            j = np.random.default_rng([self.seed, epoch]).permutation(self.epoch_len)[first :: self.num_shards]
            out[0].append(self._positions[j])
            out[1].append(self._records[j])
            out[2].append(np.full(len(j), epoch, np.int32))
        return tuple(np.concatenate(x) for x in out)  # type: ignore[return-value]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cached": None}  # worker processes recompute the permutation they need


def stream_keys(cfg: DataConfig, sizes: Sequence[int], shard: int, num_shards: int) -> grain.MapDataset:
    """The `(position, record)` keys of data shard `shard` in training order (`StreamKeys`). Training decodes
    these keys (`host_examples`); the counting pass (`epochs.count_plan`) looks their lengths up: the same order.
    """
    return grain.MapDataset.source(StreamKeys(cfg, sizes, shard, num_shards))


def open_sources(cfg: DataConfig) -> list[ShardSource | TfdsSource]:
    """Each source's records in config order: its listed shards (checked against the manifest first:
    `verify_source`), or its split of a TFDS dataset folder (`TfdsSource`)."""
    if data_format(cfg.data_dir) == "tfds":
        return [TfdsSource(cfg.data_dir, s) for s in cfg.sources]
    return [ShardSource(verify_source(cfg.data_dir, s, cfg.verify_files)) for s in cfg.sources]


# Decoded examples of this process (`DataConfig.cache_examples`): one dict of record -> Example | Skipped per data
# folder, source and decoding settings, filled by whichever reads a record first (the counting pass,
# `epochs.record_lengths`, or training) and read by both. Only one data folder's at a time: a process that trains
# several runs in turn (the experiments suite) does not keep every run's examples.
_EXAMPLE_CACHES: dict[tuple[str, str, str], dict[int, Example | Skipped]] = {}


def example_cache(cfg: DataConfig, model_cfg: ModelConfig, source: str) -> dict[int, Example | Skipped] | None:
    """The process's decoded records of `source` under `cfg`'s decoding settings; None without `cfg.cache_examples`."""
    if not cfg.cache_examples:
        return None
    data_dir = os.path.abspath(cfg.data_dir)
    # The fields that only order, batch or read the records do not change how a record decodes.
    settings = dataclasses.replace(cfg, data_dir=data_dir, sources={source: 1.0}, batch_size=1, epochs=1, seed=0,
                                   max_open_rows=1, packing="best_fit", num_workers=0, read_threads=1,
                                   worker_buffer_size=1, verify_files="size")
    if any(d != data_dir for d, _, _ in _EXAMPLE_CACHES):
        _EXAMPLE_CACHES.clear()
    return _EXAMPLE_CACHES.setdefault((data_dir, source, repr((settings, model_cfg))), {})


class _Decode:
    """The map `(position, record) -> Example | Skipped` (picklable into Grain worker processes).

    With a cache per position (`example_cache`), a record read again (a later epoch, a weight above 1, or after
    the counting pass decoded it) is not decoded again. Decoding is a pure function of the record, so the rows are
    the same. Worker processes start with empty caches of their own (the parent's are not pickled to them).
    """

    def __init__(self, records: Sequence[ShardSource | TfdsSource], decoders: Sequence[ExampleDecoder],
                 caches: Sequence[dict[int, Example | Skipped] | None] | None = None):
        self.records = list(records)
        self.decoders = list(decoders)
        self.caches = list(caches) if caches is not None else [None] * len(self.decoders)

    def __call__(self, key: tuple[int, int]) -> Example | Skipped:
        position, record = key
        cache = self.caches[position]
        if cache is not None and record in cache:
            return cache[record]
        out = self.decoders[position](record, self.records[position][record])
        if cache is not None:
            cache[record] = out  # read by Grain's threads too: one dict store is atomic
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "caches": [None if c is None else {} for c in self.caches]}


def host_examples(cfg: DataConfig, model_cfg: ModelConfig, process_index: int, process_count: int) -> grain.MapDataset:
    """The stream of `Example | Skipped` of data shard `process_index` of `process_count`, lazily decoded, in
    training order (`stream_keys`).

    Args:
      cfg: the data config.
      model_cfg: the student's config (token ids, vision merge size).
      process_index: this data shard's index (a host's when each host reads one).
      process_count: the number of data shards.

    Returns:
      A `grain.MapDataset`; element k is decoded when read.
    """
    records = open_sources(cfg)
    keys = stream_keys(cfg, [len(r) for r in records], process_index, process_count)
    if len(keys) == 0:
        raise ValueError(f"data shard {process_index} of {process_count} gets no record: use fewer data shards")
    decoders = [ExampleDecoder(s, cfg, model_cfg) for s in cfg.sources]
    return keys.map(_Decode(records, decoders, [example_cache(cfg, model_cfg, s) for s in cfg.sources]))


def _absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; outside an absl app nobody parsed them, so take defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class PackedBatchIterator(grain.DatasetIterator):
    """Packed batches of one host, with an exact, worker-count independent `get_state` / `set_state`.

    Each `next()` gives a dict of numpy arrays with a leading axis `cfg.batch_size` (see
    `packing.pack_rows`); the last incomplete batch is padded with empty rows. `stats` and `counts()` report packing
    efficiency and skipped records.
    """

    def __init__(self, examples: grain.MapDataset, cfg: DataConfig, model_cfg: ModelConfig, process: tuple[int, int]):
        """Use `make_iterator`."""
        super().__init__()
        self._examples = examples
        self._cfg = cfg
        from octomed_jax.models.positions import max_image_patches  # lazy, as in packing

        self._vcfg = model_cfg.vision
        # Images are resized to at most max_pixels: the vision tower's image bins are sized to that bound.
        self._image_patches = max_image_patches(cfg.max_pixels, self._vcfg)
        self._pad_id = special_ids_for(cfg.tokenizer_path).pad
        self._process = process
        self._fingerprint = {**cfg.fingerprint(), "process": list(process), "stream_length": len(examples)}
        self._reset()

    def _reset(self) -> None:
        self._next_index = 0
        self._inner: Any = None
        self._exhausted = False
        self._packer: RowPacker[tuple[int, Example]] = RowPacker(
            self._cfg.seq_len, self._cfg.max_patches, self._cfg.packing, self._cfg.max_open_rows
        )
        self._ready: collections.deque[list[tuple[int, Example]]] = collections.deque()
        self.stats = PackingStats(seq_len=self._cfg.seq_len, max_patches=self._cfg.max_patches)
        self._errors: collections.Counter[str] = collections.Counter()
        self._drops: collections.Counter[str] = collections.Counter()
        self._per_source: collections.Counter[str] = collections.Counter()
        self._recent: collections.deque[list[Any]] = collections.deque(maxlen=_RECENT_SKIPS)

    # -- reading -------------------------------------------------------------------------------------------

    def _stream(self) -> Any:
        if self._inner is None:
            cfg = self._cfg
            ds = self._examples[self._next_index :].to_iter_dataset(
                grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.worker_buffer_size)
            )
            if cfg.num_workers > 0:
                _absl_flags_parsed()
                ds = ds.mp_prefetch(
                    grain.MultiprocessingOptions(
                        num_workers=cfg.num_workers, per_worker_buffer_size=cfg.worker_buffer_size
                    )
                )
            self._inner = iter(ds)
        return self._inner

    def _skip(self, s: Skipped) -> None:
        (self._errors if s.is_error else self._drops)[s.reason] += 1
        self._recent.append([s.source, s.index, s.reason])
        n = sum(self._errors.values()) + sum(self._drops.values())
        if n <= _LOGGED_SKIPS or n % 1000 == 0:
            log.warning("skipped %s record %d of source %r: %s", s.reason, s.index, s.source, s.message)
        errors = sum(self._errors.values())
        if s.is_error and self._cfg.error_budget.exceeded(errors, self._next_index):
            b = self._cfg.error_budget
            recent = ", ".join(f"{src}[{i}] {r}" for src, i, r in self._recent)
            raise DataErrorBudgetExceeded(
                f"data error budget exceeded: {errors} bad records among {self._next_index} read on process "
                f"{self._process[0]} (max_errors={b.max_errors}, max_fraction={b.max_fraction} after "
                f"{b.min_records} records); last: {s.reason} in source {s.source!r} at record index {s.index}: "
                f"{s.message}. Errors by reason: {dict(self._errors)}. Recent skips: {recent}"
            )

    def _next_row(self) -> list[tuple[int, Example]]:
        while not self._ready:
            if self._exhausted:
                raise StopIteration
            try:
                item = next(self._stream())
            except StopIteration:
                self._exhausted = True
                self._ready.extend(self._packer.flush())
                continue
            index = self._next_index
            self._next_index += 1
            self._per_source[item.source] += 1
            if isinstance(item, Skipped):
                self._skip(item)
            else:
                self._ready.extend(self._packer.add((index, item), len(item), item.num_patches))
        return self._ready.popleft()

    def __next__(self) -> dict[str, np.ndarray]:
        examples: list[list[Example]] = []
        for _ in range(self._cfg.batch_size):
            try:
                examples.append([e for _, e in self._next_row()])
            except StopIteration:
                if not examples:
                    raise
                break
        for row in examples:
            self.stats.add_row(row)
        # The last batch is padded with empty rows (no loss tokens): every example is trained on.
        examples += [[] for _ in range(self._cfg.batch_size - len(examples))]
        return pack_rows(examples, self._cfg.seq_len, self._cfg.max_patches, self._vcfg, pad_id=self._pad_id,
                         image_patches=self._image_patches)

    def empty_batch(self) -> dict[str, np.ndarray]:
        """A batch of empty rows (what a data shard gives once it has run out while others have not)."""
        return empty_batch(self._cfg.batch_size, self._cfg.seq_len, self._cfg.max_patches, self._vcfg,
                           pad_id=self._pad_id, image_patches=self._image_patches)

    # -- state ---------------------------------------------------------------------------------------------

    def counts(self) -> dict[str, Any]:
        """Records read, skipped records by reason, per-source reads, recent skips, packing stats."""
        return {
            "records": self._next_index,
            "errors": dict(sorted(self._errors.items())),
            "dropped": dict(sorted(self._drops.items())),
            "per_source": dict(sorted(self._per_source.items())),
            "recent_skips": [list(x) for x in self._recent],
            "packing": self.stats.to_dict(),
        }

    def get_state(self) -> dict[str, Any]:
        """JSON-able state: stream position, open and pending rows as stream positions, counters, and the
        config fingerprint it is valid under."""
        return {
            "version": STATE_VERSION,
            "fingerprint": self._fingerprint,
            "next_index": self._next_index,
            "exhausted": self._exhausted,
            "open_rows": [[i for i, _ in row] for row in self._packer.open_rows],
            "ready_rows": [[i for i, _ in row] for row in self._ready],
            **self.counts(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Resumes at a `get_state()` state (any worker count); the open rows' examples are decoded again.

        Raises:
          ValueError: a state of another version, data config (`DataConfig.fingerprint`) or host layout.
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data iterator state version {state.get('version')}, this code reads {STATE_VERSION}")
        saved = state["fingerprint"]
        diff = {k: (saved.get(k), v) for k, v in self._fingerprint.items() if saved.get(k) != v}
        if diff:
            raise ValueError(
                f"the data iterator state was saved under another data config or host layout; (saved, now): {diff}"
            )
        self.close()
        self._closed = False
        self._reset()
        self._next_index = int(state["next_index"])
        self._exhausted = bool(state["exhausted"])

        def fetch(i: int) -> tuple[int, Example]:
            item = self._examples[i]  # random access: decode again, deterministically
            if not isinstance(item, Example):
                raise ValueError(f"stream element {i} was packed before but now decodes to {item}")
            return i, item

        # Re-place the open rows' examples in order: the packer ends up exactly as it was.
        for row in state["open_rows"]:
            packed = [fetch(i) for i in row]
            self._packer.reopen(packed, sum(len(e) for _, e in packed), sum(e.num_patches for _, e in packed))
        self._ready.extend([fetch(i) for i in row] for row in state["ready_rows"])
        self.stats = PackingStats.from_dict(state["packing"])
        self._errors.update(state["errors"])
        self._drops.update(state["dropped"])
        self._per_source.update(state["per_source"])
        self._recent.extend(state["recent_skips"])

    def close(self) -> None:
        """Stops the worker processes, if any (idempotent); `set_state` reopens."""
        if self._inner is not None and hasattr(self._inner, "close"):
            self._inner.close()
        self._inner = None
        self._closed = True

    def __str__(self) -> str:
        return f"PackedBatchIterator(process={self._process}, next_index={self._next_index})"


def make_iterator(
    cfg: DataConfig,
    model_cfg: ModelConfig,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> PackedBatchIterator:
    """The training iterator of this host: packed numpy batches of `cfg.batch_size` rows.

    Args:
      cfg: the data config.
      model_cfg: the student's config.
      process_index: this host's index (default `jax.process_index()`).
      process_count: the number of hosts (default `jax.process_count()`).

    Returns:
      A `PackedBatchIterator`; `to_global_batch` turns its batches into global arrays, and
      `checkpointing.save_args` / `restore_args` put its state into an Orbax checkpoint.
    """
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    examples = host_examples(cfg, model_cfg, process_index, process_count)
    return PackedBatchIterator(examples, cfg, model_cfg, (process_index, process_count))
