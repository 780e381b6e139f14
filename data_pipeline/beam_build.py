"""The recipe build as an Apache Beam pipeline: the stages of `data_pipeline.build`, distributed.

    python -m data_pipeline.build --config=full_mix --out=data/recipes/full_mix --runner=DirectRunner \
        --beam_args="--direct_num_workers=2 --direct_running_mode=multi_processing"

Each stage is a named transform over plain-data elements (dicts, tuples, bytes: no pickled records):

    ReadSources      one element per source -> ((source, content key), (ordinal, source, item)); rows that are no
                     question are counted
    MergeCopies      GroupByKey on (source, content key): the first copy is kept (`decontam.SameKey`'s rules)
    Screen           seeded subset, question text, benchmark decontamination (`Decontaminator.screen`, the
                     benchmark index built once per worker), keyed by `decontam.dedup_key`
    DedupExact       GroupByKey on that key: the first kept, the rest `duplicate_exact`
    DedupNear        instead of DedupExact when `decontamination.near_jaccard` is set: each question's MinHash
                     signature computed in Screen, all gathered on ONE worker that applies
                     `Deduplicator.decide` in build order (exact and near duplicates, the in-process decisions),
                     then the duplicates joined back by ordinal and dropped
    SampleTeachers   batches -> `build.sample_and_accept` (filters, teachers, rejection sampling) against the
                     completion store all workers share, so a retried bundle or a rerun never pays twice
    WriteShards      GroupByKey on the source -> `writer.TraceWriter` (sorted, byte-deterministic shards)
    WriteManifest    the workers' tallies, reads and decontamination counts -> `build.finish_manifest`

"First" is the in-process build's order: an ordinal (source index in sorted order, row in the adapter's
order) travels with each question, and every group keeps its smallest, so the shards and the manifest are
byte-identical to `build.run_build`'s for the same inputs (tests/data_pipeline/test_beam_build.py).

Near-duplicate removal is greedy in build order, so its decision step runs on one worker and holds every
screened question's features: the signature (4 x `num_perm` bytes, 256 at the default 64), the 32-byte dedup
key and the image keys, ~0.5 KB per question with Python's overhead, plus the LSH index of the kept ones (the
in-process build's, ~4.5 KB per question: one bucket entry per band): ~5 GB per million questions (measured on
20k text questions). Exact dedup moves into that step too (a twin of a near-dropped question is checked for near
duplicates in build order, as in process).

Not in this path (refused, naming the flag): `--dry_run` and `--num_shards` (use the in-process build). The seeded
subset is chosen on the launching machine (`build.select_subsets`, a keys-only pass over the sources).
The completion store is SQLite (WAL): workers must share one machine's disk (DirectRunner, or one big
worker); docs/beam_build.md says what the other runners need.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import shlex
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import ml_collections
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import GlobalWindows

from data_pipeline import build
from data_pipeline.decontam import DecontamConfig, Deduplicator, SameKey, dedup_key
from data_pipeline.records import Question
from data_pipeline.sources import Rejected, Skipped
from data_pipeline.sources.base import NOT_READ, ReleasedTraces, ReportedRead
from data_pipeline.subset import Subset
from data_pipeline.teachers import Accounting
from data_pipeline.writer import MANIFEST, ManifestStats, ShardFile, TraceWriter, merge_decontamination, read_json

log = logging.getLogger(__name__)

TALLY, READS, DECONTAM, DUPLICATES, FEATURES = "tally", "reads", "decontam", "duplicates", "features"

Element = tuple[tuple[int, int], str, dict[str, Any]]  # (ordinal, source, item as plain data)


def to_element(item: Question | ReleasedTraces) -> dict[str, Any]:
    """A question (or released traces) as plain data, the form elements travel in between workers."""
    if isinstance(item, Question):
        return {"question": item.to_dict()}
    return {"question": item.question.to_dict(), "responses": list(item.responses), "teacher": item.teacher}


def from_element(e: Mapping[str, Any]) -> Question | ReleasedTraces:
    """The inverse of `to_element`."""
    q = Question.from_dict(e["question"])
    return q if "responses" not in e else ReleasedTraces(q, tuple(e["responses"]), e["teacher"])


def _question(item: Question | ReleasedTraces) -> Question:
    return item if isinstance(item, Question) else item.question


def _in_window(value: Any) -> Any:
    return GlobalWindows.windowed_value(value)


class _Stage(beam.DoFn):
    """A stage with the recipe (set up once per worker) that counts into a `build.Tally`, emitted per bundle."""

    def __init__(self, config: Mapping[str, Any], source_root: str):
        self._config, self._source_root = dict(config), source_root

    def setup(self) -> None:
        self.config = ml_collections.ConfigDict(self._config)
        self.recipe, self.source_root = build.prepare(self.config, self._source_root)

    def start_bundle(self) -> None:
        self.tally = build.Tally()

    def finish_bundle(self) -> Iterator[Any]:
        if self.tally.stats.by or self.tally.teachers or self.tally.usage:
            yield beam.pvalue.TaggedOutput(TALLY, _in_window(self.tally.to_dict()))

    def drop(self, source: str, q: Question, why: str) -> None:
        self.tally.stats[(source, q.category)].dropped[why] += 1


class ReadSource(_Stage):
    """(source index, source key) -> ((source, content key), (ordinal, source, item)) per question; output `reads`:
    (source, its `ReadReport`); rows that are no question are counted and dropped."""

    def process(self, element: tuple[int, str]) -> Iterator[Any]:
        index, key = element
        entry = self.recipe.sources[key]
        reader = ReportedRead(
            functools.partial(build._read, entry, self.source_root, self.recipe),
            build._resolve(self.source_root, entry.path),
        )
        for row, item in enumerate(reader):
            if isinstance(item, Skipped) and item.reason == NOT_READ:  # a whole file: in the file table
                continue
            if isinstance(item, Rejected | Skipped):
                build.count_row(self.tally.stats, key, item)
                continue
            q = _question(item)
            self.tally.stats[(key, q.category)].questions_in += 1
            yield (key, q.key), ((index, row), key, to_element(item))  # copies are merged within a source
        yield beam.pvalue.TaggedOutput(READS, (key, reader.report.to_dict()))


class MergeCopies(_Stage):
    """((source, content key), copies) -> the first copy; the others counted `duplicate_question` or
    `conflicting_duplicate` (`decontam.SameKey`, fed in the in-process build's order)."""

    def process(self, element: tuple[tuple[str, str], Iterable[Element]]) -> Iterator[Element]:
        same, kept = SameKey(), None
        for ordinal, source, e in sorted(element[1], key=lambda v: v[0]):
            q = _question(from_element(e))
            why = same.check(q)
            if why is None:
                kept = (ordinal, source, e)
            else:
                self.drop(source, q, why)
        if same.conflicts:
            build._log_conflicts(kept[1], same.conflicts, log.warning)
        yield kept


class Screen(_Stage):
    """The subset, text and benchmark checks -> (dedup key, element); output `decontam`: a
    `Decontaminator.report()` per bundle (its counts only); output `features` when near-duplicate removal is on:
    (ordinal, `Deduplicator.features` with the signature as bytes) per kept question."""

    def __init__(self, config: Mapping[str, Any], source_root: str, subsets: Mapping[str, Subset]):
        super().__init__(config, source_root)
        self._subsets = dict(subsets)

    def setup(self) -> None:
        super().setup()
        d = self.recipe.decontamination
        self.decontam = build._decontaminator(self.recipe, log.warning) if d.enabled else None
        self.dedup = self.decontam is not None and bool(d.dedup_exact)
        self.near = self.decontam is not None and self.decontam.config.near_jaccard is not None

    def start_bundle(self) -> None:
        super().start_bundle()
        if self.decontam is not None:
            self.decontam.reset_counts()

    def process(self, element: Element) -> Iterator[tuple[bytes, Element]]:
        ordinal, source, e = element
        q = _question(from_element(e))
        why, image_keys = build.screen(q, self._subsets.get(source)), []
        if why is None and self.decontam is not None:
            why, image_keys = self.decontam.screen(q)
        if why is not None:
            self.drop(source, q, why)
            return
        if self.near:
            key, images, signature = self.decontam.dedup.features(q, image_keys)
            yield beam.pvalue.TaggedOutput(FEATURES, (ordinal, key, images, signature.tobytes()))
        # Without dedup every question is its own group.
        yield (dedup_key(q, image_keys) if self.dedup else q.key.encode()), element

    def finish_bundle(self) -> Iterator[Any]:
        yield from super().finish_bundle()
        if self.decontam is not None:
            yield beam.pvalue.TaggedOutput(DECONTAM, _in_window(self.decontam.report()))


class _Dedup(_Stage):
    """A stage that drops duplicates, counted also per reason (output `duplicates`: (reason, count) per bundle,
    for the manifest's `decontamination`)."""

    def start_bundle(self) -> None:
        super().start_bundle()
        self.duplicates: collections.Counter[str] = collections.Counter()

    def drop_duplicate(self, element: Element, why: str) -> None:
        _, source, e = element
        self.drop(source, _question(from_element(e)), why)
        self.duplicates[why] += 1

    def finish_bundle(self) -> Iterator[Any]:
        yield from super().finish_bundle()
        for why, n in sorted(self.duplicates.items()):
            yield beam.pvalue.TaggedOutput(DUPLICATES, _in_window((why, n)))


class DedupExact(_Dedup):
    """(dedup key, questions) -> the first; the others counted `duplicate_exact`."""

    def process(self, element: tuple[bytes, Iterable[Element]]) -> Iterator[Element]:
        first, *rest = sorted(element[1], key=lambda v: v[0])
        for e in rest:
            self.drop_duplicate(e, "duplicate_exact")
        yield first


class DecideDuplicates(beam.DoFn):
    """Every screened question's features (one list, on one worker) -> (ordinal, reason) per duplicate:
    `Deduplicator.decide` in build order, so exactly the in-process decisions."""

    def __init__(self, config: DecontamConfig):
        self._config = config

    def process(self, features: list[tuple[tuple[int, int], bytes, str, bytes]]) -> Iterator[tuple[Any, str]]:
        dedup = Deduplicator(self._config)
        for ordinal, key, images, signature in sorted(features, key=lambda v: v[0]):
            why = dedup.decide(key, images, np.frombuffer(signature, dtype=np.uint32))
            if why is not None:
                yield ordinal, why


class DropDuplicates(_Dedup):
    """(ordinal, {"questions": [element], "drops": [reason] or []}) -> the element unless it is a duplicate."""

    def process(self, element: tuple[Any, Mapping[str, Sequence[Any]]]) -> Iterator[Element]:
        (question,), drops = element[1]["questions"], element[1]["drops"]
        if drops:
            self.drop_duplicate(question, drops[0])
        else:
            yield question


class DedupNear(beam.PTransform):
    """(dedup key, element) -> the elements that are no exact or near duplicate, given Screen's `features`.

    The features are gathered into one list on ONE worker (`DecideDuplicates`: greedy, in build order), whose
    verdicts are joined back to the questions by ordinal; memory there: the module docstring.
    """

    def __init__(self, config: Mapping[str, Any], source_root: str, dedup: DecontamConfig,
                 features: beam.PCollection):
        super().__init__()
        self.config, self.source_root, self.dedup, self.features = config, source_root, dedup, features

    def expand(self, questions: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        drops = (
            self.features
            | "Gather" >> beam.combiners.ToList()
            | "Decide" >> beam.ParDo(DecideDuplicates(self.dedup))
        )
        keyed = questions | "ByOrdinal" >> beam.Map(lambda kv: (kv[1][0], kv[1]))
        return (
            {"questions": keyed, "drops": drops}
            | "Join" >> beam.CoGroupByKey()
            | "DropDuplicates" >> beam.ParDo(DropDuplicates(self.config, self.source_root)).with_outputs(
                TALLY, DUPLICATES, main="questions"
            )
        )


class SampleTeachers(_Stage):
    """A batch of screened questions -> (source, (question key, sample index, trace bytes)) per accepted trace,
    through `build.sample_and_accept` (filters, teachers, rejection sampling). The completion store is opened
    once per worker on the path all workers share: a completion stored by a failed bundle or an earlier run is
    read back, never requested again."""

    def __init__(self, config: Mapping[str, Any], source_root: str, store: str):
        super().__init__(config, source_root)
        self._store_path = store

    def setup(self) -> None:
        super().setup()
        self.store = build.open_store(self._store_path, log.warning)
        self.endpoints: dict[str, build.Endpoints] = {}
        self.accounting = Accounting()

    def teardown(self) -> None:
        self.store.close()

    def process(self, batch: Sequence[Element]) -> Iterator[tuple[str, tuple[str, int, bytes]]]:
        by_source: dict[str, list[Question | ReleasedTraces]] = collections.defaultdict(list)
        for _, source, e in sorted(batch, key=lambda v: v[0]):
            by_source[source].append(from_element(e))
        tokens = build._TokenCounter(self.tally.stats)
        for source, items in sorted(by_source.items()):
            if source not in self.endpoints:
                entry = self.recipe.sources[source]
                self.endpoints[source] = build.make_endpoints(
                    self.recipe, build.make_teacher, build.image_root(entry, self.source_root)
                )
            ready = collections.deque(build.released_result(it) for it in items if not isinstance(it, Question))
            questions = [it for it in items if isinstance(it, Question)]
            for t in build.sample_and_accept(
                self.recipe, self.endpoints[source], self.store, source, questions, ready, self.tally, tokens,
                self.accounting,
            ):
                yield source, (t.question.key, t.sample_index, t.to_bytes())
        tokens.flush()


class WriteSource(beam.DoFn):
    """(source, its traces) -> (source, its shards as `ShardFile` tuples), written by `writer.TraceWriter`."""

    def __init__(self, out_dir: str, files_per_source: int):
        self._out_dir, self._files = out_dir, files_per_source

    def process(self, element: tuple[str, Iterable[tuple[str, int, bytes] | None]]) -> Iterator[Any]:
        source, records = element
        with TraceWriter(self._out_dir, files_per_source=self._files) as w:
            w.declare_source(source)
            for r in records:
                if r is not None:  # the marker that makes a source without traces get its (empty) files
                    w.add_record(source, *r)
        yield source, [tuple(f) for f in w.files[source]]


class WriteManifest(beam.DoFn):
    """Everything the workers counted -> `build.finish_manifest` (written last)."""

    def __init__(self, config: Mapping[str, Any], out_dir: str, decontam_zero: Mapping[str, Any] | None):
        self._config, self._out_dir, self._zero = dict(config), out_dir, decontam_zero

    def process(self, _: Any, files: list, tallies: list, reads: list, decontam: list, duplicates: list) -> None:
        tally = build.Tally()
        for d in tallies:
            tally.add(build.Tally.from_dict(d))
        report = None
        if self._zero is not None:
            report = merge_decontamination([self._zero, *decontam])
            counts = collections.Counter()
            for why, n in duplicates:
                counts[why] += n
            report["duplicate_exact"] += counts["duplicate_exact"]
            report["near_duplicate"] += counts["duplicate_near"]
        build.finish_manifest(
            ml_collections.ConfigDict(self._config),
            tally,
            {s: [ShardFile(*f) for f in fl] for s, fl in files},
            self._out_dir,
            dict(reads),
            report,
        )


class RecipeBuild(beam.PTransform):
    """The whole build on a pipeline's root: sources -> shards + manifest.json under `out_dir`.

    Args:
      config: the recipe file's config as a dict (`ConfigDict.to_dict()`; rebuilt on each worker).
      recipe: its `build.Recipe` (checked).
      source_root: the folder relative source paths are under.
      out_dir: where shards and the manifest go (a path every worker can write).
      store: the completion store's path (shared by every worker).
      subsets: the seeded subsets (`build.select_subsets`).
      decontam_zero: the decontamination report before any question (`Decontaminator.report()`), or None
        when decontamination is off.
      near: the decontamination settings when near-duplicate removal is on (then `DedupNear` replaces
        `DedupExact`), else None.
      batch: questions per teacher-sampling batch.
    """

    def __init__(self, *, config: Mapping[str, Any], recipe: build.Recipe, source_root: str, out_dir: str,
                 store: str, subsets: Mapping[str, Subset], decontam_zero: Mapping[str, Any] | None, batch: int,
                 near: DecontamConfig | None = None):
        super().__init__()
        self.config, self.recipe, self.source_root, self.out_dir = config, recipe, source_root, out_dir
        self.store, self.subsets, self.decontam_zero, self.batch = store, subsets, decontam_zero, batch
        self.near = near

    def expand(self, root: beam.pvalue.PBegin) -> beam.pvalue.PDone:
        cfg, sr = self.config, self.source_root
        sources = sorted(self.recipe.sources)
        read = (
            root
            | "Sources" >> beam.Create(list(enumerate(sources)))
            | "ReadSources" >> beam.ParDo(ReadSource(cfg, sr)).with_outputs(TALLY, READS, main="questions")
        )
        merged = (
            read.questions
            | "ByContentKey" >> beam.GroupByKey()
            | "MergeCopies" >> beam.ParDo(MergeCopies(cfg, sr)).with_outputs(TALLY, main="questions")
        )
        screened = merged.questions | "Screen" >> beam.ParDo(Screen(cfg, sr, self.subsets)).with_outputs(
            TALLY, DECONTAM, FEATURES, main="questions"
        )
        if self.near is not None:
            deduped = screened.questions | "DedupNear" >> DedupNear(cfg, sr, self.near, screened[FEATURES])
        else:
            deduped = (
                screened.questions
                | "ByDedupKey" >> beam.GroupByKey()
                | "DedupExact" >> beam.ParDo(DedupExact(cfg, sr)).with_outputs(TALLY, DUPLICATES, main="questions")
            )
        sampled = (
            deduped.questions
            | "Spread" >> beam.Reshuffle()
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch)
            | "SampleTeachers" >> beam.ParDo(SampleTeachers(cfg, sr, self.store)).with_outputs(TALLY, main="traces")
        )
        every_source = root | "EverySource" >> beam.Create([(s, None) for s in sources])
        files = (
            (sampled.traces, every_source)
            | "AllTraces" >> beam.Flatten()
            | "BySource" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(WriteSource(self.out_dir, int(self.recipe.files_per_source)))
        )
        tallies = (
            (read[TALLY], merged[TALLY], screened[TALLY], deduped[TALLY], sampled[TALLY])
            | "AllTallies" >> beam.Flatten()
        )
        side = beam.pvalue.AsList
        _ = (
            root
            | "Once" >> beam.Create([None])
            | "WriteManifest" >> beam.ParDo(
                WriteManifest(cfg, self.out_dir, self.decontam_zero),
                files=side(files),
                tallies=side(tallies),
                reads=side(read[READS]),
                decontam=side(screened[DECONTAM]),
                duplicates=side(deduped[DUPLICATES]),
            )
        )
        return beam.pvalue.PDone(root.pipeline)


def run_beam_build(
    config: ml_collections.ConfigDict,
    *,
    out_dir: str | None = None,
    source_root: str | None = None,
    runner: str = "DirectRunner",
    beam_args: Sequence[str] | str = (),
    log_fn: Callable[[str], None] = print,
) -> build.BuildResult:
    """Runs the whole build as a Beam pipeline and waits for it; the output is that of `build.run_build`.

    Args:
      config: the recipe file's ConfigDict.
      out_dir: output folder (default `recipe.out_dir`), shared by every worker.
      source_root: folder that relative source paths are under (default `recipe.source_root`).
      runner: a Beam runner name (`DirectRunner`, `DataflowRunner`, `FlinkRunner`, `SparkRunner`, ...).
      beam_args: more pipeline options, as a list or one shell-quoted string (e.g.
        "--direct_num_workers=2 --direct_running_mode=multi_processing").

    Returns:
      A BuildResult (`accounting` is empty: each worker counts its own requests).

    Raises:
      RecipeError: as `run_build`, or a setting this path does not support (named).
    """
    recipe, source_root = build.prepare(config, source_root)
    out_dir = out_dir or recipe.out_dir
    dec = build._decontaminator(recipe, log_fn) if recipe.decontamination.enabled else None  # fails early, here
    zero = dec.report() if dec is not None else None
    near = dec.config if dec is not None and dec.config.near_jaccard is not None else None
    subsets = build.select_subsets(recipe, source_root, log_fn)
    os.makedirs(out_dir, exist_ok=True)
    store = build.store_path(recipe, out_dir)
    build.open_store(store, log_fn).close()  # created (and its legacy rows reported) once, before the workers
    args = shlex.split(beam_args) if isinstance(beam_args, str) else list(beam_args)
    options = PipelineOptions([f"--runner={runner}", *args])
    with beam.Pipeline(options=options) as p:
        _ = p | "Build" >> RecipeBuild(
            config=config.to_dict(),
            recipe=recipe,
            source_root=source_root,
            out_dir=out_dir,
            store=store,
            subsets=subsets,
            decontam_zero=zero,
            batch=4 * int(recipe.concurrency),
            near=near,
        )
    manifest = read_json(os.path.join(out_dir, MANIFEST), "manifest")
    stats = ManifestStats.from_dict(manifest["sources"])
    reads = {s: e for s, e in manifest["sources"].items() if "input_files" in e}
    table = build.build_table(reads, stats, None, Accounting(), manifest.get("decontamination"))
    log_fn(table)
    return build.BuildResult(manifest, stats, Accounting(), {}, table, reads)
