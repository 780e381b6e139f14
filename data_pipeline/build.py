"""Builds a recipe: public question sets -> accepted traces in ArrayRecord shards + manifest.json.

    python -m data_pipeline.build --config=full_mix --out=data/recipes/full_mix --source_root=data/sources
    python -m data_pipeline.build --config=filter_judge --dry_run
    python -m data_pipeline.build --config=traces_4 --config.recipe.traces_per_question=2 --out=data/recipes/k2
    # A big build as 64 independent jobs (a SLURM array, say), then one merge:
    python -m data_pipeline.build --config=full_mix --num_shards=64 --shard_index=$SLURM_ARRAY_TASK_ID
    python -m data_pipeline.build --config=full_mix --num_shards=64 --merge
    # The same build as an Apache Beam pipeline (`pip install .[beam]`; docs/beam_build.md for other runners):
    python -m data_pipeline.build --config=full_mix --runner=DirectRunner \
        --beam_args="--direct_num_workers=2 --direct_running_mode=multi_processing"

`--config=NAME` and `--config.x.y=v` overrides are those of `python -m octomed_jax.train` (`configs.cli`), so
a recipe name with the same overrides is the same recipe at both stages. The config's `plugins` are
loaded first (`data_pipeline.plugins`): adapters and teacher kinds outside the production registries.

Stages, streamed per source (bounded memory; questions are never all held at once):
read (adapter) -> shard by hash of the question key -> merge exact copies (same content key) -> seeded
subset (`data_pipeline.subset`: recipe.subset and max_questions, the same in every job) -> decontamination
and dedup -> [judge filter] -> [student pass-rate filter] -> teacher
sampling (stored as it arrives) -> [teacher pass-rate filter] -> rejection sampling, K distinct traces,
formatting -> sorted shards.

Teacher, judge and student calls are I/O-bound and run in a thread pool (`recipe.concurrency`); the
CPU-bound work per completion (answer extraction, formatting, msgpack) is cheap next to the tokenizer,
whose Rust `encode_batch` already uses every core.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags

from data_pipeline import filters as flt
from data_pipeline.decontam import SameKey
from data_pipeline.hashing import shard_of
from data_pipeline.plugins import PLUGIN_HINT, PluginError, load_plugins
from data_pipeline.records import AcceptedTrace, BadRecordError, Question
from data_pipeline.sources import Rejected, Skipped, outcome_key
from data_pipeline.sources.base import NOT_READ, ReportedRead
from data_pipeline.sources.layout import LayoutError
from data_pipeline.storage import ManifestError, StorageError
from data_pipeline.store import CompletionStore
from data_pipeline.subset import Subset, pool_of, select
from data_pipeline.teachers import Accounting, Completion, SampleResult, Teacher, make_teacher, sample_questions
from data_pipeline.validity import check_question_text
from data_pipeline.writer import (
    MANIFEST,
    ManifestStats,
    ShardFile,
    TraceWriter,
    build_manifest,
    count_tokens,
    merge_manifests,
    partial_manifest_path,
    write_json,
    write_manifest,
)

UNPARSED = "unparsed"  # the category under which rows an adapter rejected are counted


class RecipeError(ValueError):
    """A recipe that cannot run (missing path, unknown adapter, bad setting); says which field."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The typed view of `config.recipe` that a build reads (`configs/base.py` documents every field).

    The scalars are checked once, here, naming the field that is wrong; the sections stay ConfigDicts,
    read by the adapters (`sources`), decontamination (`decontamination`), teachers (`teachers`, the filters'
    endpoints) and filters, each of which checks its own entries.
    """

    name: str
    seed: int
    source_root: str  # relative source paths are under it (`--source_root` overrides)
    out_dir: str  # "" -> `--out` must be given
    store: str  # completion store; "" -> <out>/completions[-i-of-n].sqlite
    traces_per_question: int  # K
    concurrency: int  # teacher requests in flight
    max_rounds: int  # re-asks when an endpoint returns fewer samples than requested
    files_per_source: int  # ArrayRecord files per source per build job
    sources: ml_collections.ConfigDict  # key -> configs.base.source(...) entry
    teachers: ml_collections.ConfigDict  # category -> teacher settings
    response_format: ml_collections.ConfigDict  # category -> "cot" | "direct"
    filters: ml_collections.ConfigDict  # teacher_pass_rate, student_pass_rate, judge
    decontamination: ml_collections.ConfigDict
    images: ml_collections.ConfigDict  # max_source_pixels, max_pixels
    subset: ml_collections.ConfigDict  # questions (N, 0 = all), stratify_classes (`data_pipeline.subset`)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Recipe:
        """Reads `config.recipe`.

        Raises:
          RecipeError: the config has no `recipe`, or a field is missing or of the wrong type (named).
        """
        if "recipe" not in config:
            raise RecipeError("the config has no `recipe` field (derive it from configs/base.py)")
        recipe = config.recipe
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name not in recipe:
                raise RecipeError(f"recipe.{field.name} is missing (configs/base.py sets every recipe field)")
            value = recipe[field.name]
            want = _FIELD_TYPES[field.type]
            if isinstance(value, bool) or not isinstance(value, want):
                raise RecipeError(f"recipe.{field.name} = {value!r}: want {want.__name__}")
            if field.name in _COUNTS and value < 1:
                raise RecipeError(f"recipe.{field.name} = {value!r}: want at least 1")
            values[field.name] = value
        return cls(**values)


_FIELD_TYPES = {"str": str, "int": int, "ml_collections.ConfigDict": ml_collections.ConfigDict}
_COUNTS = ("traces_per_question", "concurrency", "max_rounds", "files_per_source")  # each at least 1


def _resolve(root: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(root, path)


def _source_entries(recipe: Recipe) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(recipe field, entry) of every training source (benchmarks come from the registry: `_decontaminator`)."""
    return [(f"recipe.sources.{k}", v) for k, v in recipe.sources.items()]


def check_registered(recipe: Recipe) -> None:
    """Fails at once, naming the recipe field, when an adapter or a teacher kind is not registered."""
    from data_pipeline.sources import SOURCES
    from data_pipeline.teachers import TEACHER_KINDS

    for field, entry in _source_entries(recipe):
        if entry.adapter not in SOURCES:
            raise RecipeError(
                f"{field}.adapter = {entry.adapter!r} is not a registered adapter; known: {sorted(SOURCES)}; "
                f"{PLUGIN_HINT}"
            )
    endpoints = [(f"recipe.teachers.{c}", recipe.teachers[c]) for c in recipe.teachers]
    endpoints += [
        (f"recipe.filters.{name}.endpoint", recipe.filters[name].endpoint)
        for name in ("judge", "student_pass_rate")
        if recipe.filters[name].enabled
    ]
    for field, settings in endpoints:
        kind = settings.get("kind", "openai") or "openai"
        if kind not in TEACHER_KINDS:
            raise RecipeError(
                f"{field}.kind = {kind!r} is not a registered teacher kind; known: {sorted(TEACHER_KINDS)}; "
                f"{PLUGIN_HINT}"
            )


def check_paths(recipe: Recipe, source_root: str) -> None:
    """Fails at once, naming the path and the recipe field, when a source or benchmark path is missing."""
    for field, entry in _source_entries(recipe):
        path = _resolve(source_root, entry.path)
        if not os.path.exists(path):
            raise RecipeError(
                f"recipe {recipe.name!r}: {field}.path = {entry.path!r} -> {path} does not exist "
                f"(source_root {source_root!r}; set --source_root or fix the recipe)"
            )


def _read(
    entry: ml_collections.ConfigDict, source_root: str, recipe: Recipe, *, keys_only: bool = False
) -> Iterator[Any]:
    """The adapter's items for one source entry (Question | ReleasedTraces | Rejected); `check_registered` ran."""
    from data_pipeline.sources import SOURCES, ImageSettings

    read = SOURCES[entry.adapter].read
    options = dict(entry.options.to_dict()) if hasattr(entry.options, "to_dict") else dict(entry.options)
    params = inspect.signature(read).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "images" in params or accepts_any:
        # A first pass that only needs keys skips decoding images; keys hash the images' bytes, so it reads them.
        options["images"] = ImageSettings(max_pixels=int(recipe.images.max_source_pixels), decode=not keys_only)
    if "seed" in params and "seed" not in options:
        options["seed"] = int(recipe.seed)
    return read(_resolve(source_root, entry.path), split=entry.split, **options)


@dataclasses.dataclass
class BuildResult:
    """What a build did: the manifest (None for a dry run) and the counts it printed."""

    manifest: dict[str, Any] | None
    stats: ManifestStats
    accounting: Accounting
    dry_run_requests: dict[str, int]
    table: str
    reads: dict[str, Any] = dataclasses.field(default_factory=dict)  # source -> its files (`file_table`)


@dataclasses.dataclass
class Tally:
    """What the build's stages count, mergeable across workers (`add`, `to_dict`): per (source, category)
    statistics, the endpoints used (their settings, by name) and the tokens each was billed."""

    stats: ManifestStats = dataclasses.field(default_factory=ManifestStats)
    teachers: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    usage: dict[str, collections.Counter] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )

    def note_usage(self, completions: Iterable[Completion]) -> None:
        """Adds the completions' prompt and completion tokens to their endpoint's usage."""
        for c in completions:
            u = self.usage[c.teacher]
            u["prompt_tokens"] += c.prompt_tokens
            u["completion_tokens"] += c.completion_tokens

    def describe(self, role: str, s: Any, categories: Sequence[str]) -> None:
        """Records an endpoint's settings (`role` of its first use) and the categories it answered."""
        info = self.teachers.setdefault(
            s.name,
            {
                "role": role,
                "model": s.model,
                "base_url": s.base_url,
                "prompt_version": s.prompt_version,
                "n": int(s.n),
                "temperature": float(s.temperature),
                "top_p": float(s.top_p),
                "max_tokens": int(s.max_tokens),
                "price_input_per_1m": float(s.price_input_per_1m),
                "price_output_per_1m": float(s.price_output_per_1m),
                "categories": [],
            },
        )
        info["categories"] = sorted(set(info["categories"]) | set(categories))

    def add(self, other: Tally) -> None:
        """Adds another worker's tally."""
        for k, v in other.stats.by.items():
            self.stats[k].add(v)
        for name, info in other.teachers.items():
            mine = self.teachers.setdefault(name, dict(info))
            mine["categories"] = sorted(set(mine["categories"]) | set(info["categories"]))
        for name, u in other.usage.items():
            self.usage[name].update(u)

    def teacher_info(self) -> dict[str, dict[str, Any]]:
        """The manifest's `teachers`: each endpoint's settings and usage (cost from its token totals and prices)."""
        out = {}
        for name, info in self.teachers.items():
            out[name] = dict(info)
            if name in self.usage:
                p, c = int(self.usage[name]["prompt_tokens"]), int(self.usage[name]["completion_tokens"])
                cost = (p * info["price_input_per_1m"] + c * info["price_output_per_1m"]) / 1e6
                out[name]["usage"] = {"prompt_tokens": p, "completion_tokens": c, "cost_usd": round(cost, 6)}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (what a Beam worker emits)."""
        return {
            "stats": self.stats.to_dict(),
            "teachers": self.teachers,
            "usage": {k: dict(v) for k, v in self.usage.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Tally:
        t = cls(stats=ManifestStats.from_dict(d["stats"]), teachers={k: dict(v) for k, v in d["teachers"].items()})
        for k, v in d["usage"].items():
            t.usage[k].update(v)
        return t


class _TokenCounter:
    """Counts response tokens in batches (the tokenizer is far faster per batch than per text)."""

    def __init__(self, stats: ManifestStats, batch: int = 256):
        self.stats, self.batch = stats, batch
        self.pending: list[tuple[tuple[str, str], str]] = []

    def add(self, key: tuple[str, str], text: str) -> None:
        self.pending.append((key, text))
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        by_key: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
        for k, t in self.pending:
            by_key[k].append(t)
        for k, texts in by_key.items():
            self.stats[k].response_tokens += count_tokens(texts)
        self.pending.clear()


def _bar(progress: bool, desc: str, position: int) -> Any:
    from tqdm import tqdm

    return tqdm(desc=desc, unit="q", position=position, leave=False, disable=not progress, dynamic_ncols=True)


def released_result(item: Any) -> SampleResult:
    """A released-trace item (`sources.ReleasedTraces`) as a sampled question: no teacher is called."""
    q = item.question
    return SampleResult(
        q,
        tuple(
            Completion(q.key, item.teacher, "released", i, text, None, "stop", 0, 0)
            for i, text in enumerate(item.responses)
        ),
    )


def count_row(stats: ManifestStats, source: str, item: Rejected | Skipped) -> None:
    """Counts a row that is no question (an adapter's `Rejected` or `Skipped`) under `UNPARSED`."""
    s = stats[(source, UNPARSED)]
    s.questions_in += 1
    s.dropped[outcome_key(item)] += 1


def screen(q: Question, subset: Subset | None) -> str | None:
    """Why a question (the first of its content key) is not sampled, before decontamination: outside the
    seeded subset (`not_in_subset`), or text that training would refuse (checked before any teacher call)."""
    if subset is not None and q.key not in subset:
        return "not_in_subset"
    try:
        check_question_text(q)
    except BadRecordError as e:
        return e.reason
    return None


@dataclasses.dataclass
class Endpoints:
    """The endpoints one source's questions go to, made with that source's image root."""

    teachers: dict[str, Teacher]  # category -> teacher
    judge: Teacher | None
    student: Teacher | None


def image_root(entry: ml_collections.ConfigDict, source_root: str) -> str:
    """The folder a source's relative image paths are under."""
    p = _resolve(source_root, entry.path)
    return p if os.path.isdir(p) else os.path.dirname(p)


def make_endpoints(recipe: Recipe, make: Callable[..., Teacher], root: str) -> Endpoints:
    """Teachers per category, plus the judge and student endpoints when their filters are on."""
    f_cfg = recipe.filters
    return Endpoints(
        teachers={c: make(recipe.teachers[c], image_root=root) for c in recipe.teachers},
        judge=make(f_cfg.judge.endpoint, image_root=root, message_builder=flt.judge_messages)
        if f_cfg.judge.enabled
        else None,
        student=make(f_cfg.student_pass_rate.endpoint, image_root=root) if f_cfg.student_pass_rate.enabled else None,
    )


def sample_and_accept(
    recipe: Recipe,
    ends: Endpoints,
    store: CompletionStore,
    source: str,
    questions: Iterable[Question],
    ready: collections.deque,
    tally: Tally,
    tokens: _TokenCounter,
    accounting: Accounting,
    on_result: Callable[[], Any] = lambda: None,
) -> Iterator[AcceptedTrace]:
    """The sampling stages of one source's screened questions: [judge filter] -> [student pass-rate filter] ->
    teacher sampling (stored as it arrives) -> [teacher pass-rate filter] -> rejection sampling, K distinct
    traces, formatting. Counts into `tally` and `tokens`.

    Args:
      recipe: the recipe.
      ends: the source's endpoints (`make_endpoints`).
      store: where completions are stored and found again (a rerun requests only the missing ones).
      source: the source key (what `tally` counts under).
      questions: the questions that need teacher calls, streamed.
      ready: released-trace results (`released_result`), filled while `questions` is consumed.
      tally: where counts, endpoints and usage go.
      tokens: counts the kept traces' response tokens.
      accounting: requests and failures per endpoint.
      on_result: called once per sampled question (a progress bar).

    Yields:
      The accepted traces, in completion order.
    """
    f_cfg = recipe.filters
    concurrency = int(recipe.concurrency)
    stream: Iterable[Question] = questions
    if ends.judge is not None:
        tally.describe("judge", f_cfg.judge.endpoint, [])
        stream = _judge_stage(stream, ends.judge, store, f_cfg, tally, source, concurrency, accounting)
    if ends.student is not None:
        tally.describe("student", f_cfg.student_pass_rate.endpoint, [])
        stream = _student_stage(stream, ends.student, store, f_cfg, tally, source, concurrency, accounting)
    ns = {c: int(recipe.teachers[c].n) for c in recipe.teachers}
    results = sample_questions(
        ends.teachers, stream, store, n=ns, concurrency=concurrency, accounting=accounting,
        max_rounds=int(recipe.max_rounds),
    )
    seen_categories: set[str] = set()
    for res in _with_ready(results, ready):
        on_result()
        q = res.question
        s = tally.stats[(source, q.category)]
        if res.completions and res.completions[0].prompt_version != "released":
            seen_categories.add(q.category)
            tally.note_usage(res.completions)
        if res.error is not None:
            s.dropped["teacher_error"] += 1
            continue
        if f_cfg.teacher_pass_rate.enabled:
            n_ok = flt.count_correct(q, res.completions)
            if not flt.pass_rate_keep(n_ok, int(f_cfg.teacher_pass_rate.lo), int(f_cfg.teacher_pass_rate.hi)):
                s.dropped["teacher_pass_rate"] += 1
                continue
        rej = flt.rejection_sample(
            q,
            res.completions,
            k=int(recipe.traces_per_question),
            response_format=recipe.response_format[q.category],
            seed=int(recipe.seed),
        )
        s.samples += rej.n_sampled
        s.samples_correct += rej.n_correct
        s.dropped_samples.update(rej.dropped)
        if not rej.traces:
            s.dropped["no_accepted_trace"] += 1
            continue
        s.questions_kept += 1
        s.traces_kept += len(rej.traces)
        for t in rej.traces:
            tokens.add((source, q.category), t.response)
            yield t
    for c in seen_categories:
        tally.describe("teacher", recipe.teachers[c], [c])


def finish_manifest(
    config: ml_collections.ConfigDict,
    tally: Tally,
    files: Mapping[str, Sequence[ShardFile]],
    out_dir: str,
    reads: Mapping[str, Any],
    decontamination: Mapping[str, Any] | None,
    *,
    shard_index: int = 0,
    num_shards: int = 1,
) -> dict[str, Any]:
    """Builds the manifest and writes it (last; a partial manifest for a job of a sharded build).

    Args:
      config: the recipe file's ConfigDict.
      tally: the build's counts (all of this job's).
      files: the shards written (`TraceWriter.close`).
      out_dir: the output folder.
      reads: source -> its `ReadReport.to_dict()`.
      decontamination: `Decontaminator.report()` (merged over workers), or None when off.
      shard_index: this job of a sharded build.
      num_shards: the build's jobs.
    """
    recipe = Recipe.from_config(config)
    manifest = build_manifest(
        recipe_name=recipe.name,
        recipe=config.recipe,
        seed=int(recipe.seed),
        stats=tally.stats,
        files=files,
        out_dir=out_dir,
        teachers=tally.teacher_info(),
        shard_index=shard_index if num_shards > 1 else None,
        num_shards=num_shards,
        reads=dict(sorted(reads.items())),
    )
    if decontamination is not None:  # per benchmark: what was checked and what each match removed
        manifest["decontamination"] = dict(decontamination)
    if num_shards > 1:
        write_json(partial_manifest_path(out_dir, shard_index, num_shards), manifest)
    else:
        write_manifest(out_dir, manifest)  # last; then deletes the shard files it does not list
    return manifest


def build_table(reads: Mapping[str, Any], stats: ManifestStats, dry_requests: Mapping[str, int] | None,
                accounting: Accounting, decontamination: Mapping[str, Any] | None) -> str:
    """The printed summary: the file table, the per-source counts, the decontamination table."""
    table = file_table(reads) + "\n\n" + summary_table(stats, dry_requests, accounting)
    if decontamination is not None:
        table += "\n\n" + decontamination_table(decontamination)
    return table


def store_path(recipe: Recipe, out_dir: str, shard_index: int = 0, num_shards: int = 1) -> str:
    """The completion store: `recipe.store`, else one under `out_dir` (one per job of a sharded build)."""
    if recipe.store:
        return recipe.store
    if num_shards == 1:
        return os.path.join(out_dir, "completions.sqlite")
    return os.path.join(out_dir, "stores", f"completions-{shard_index:05d}-of-{num_shards:05d}.sqlite")


def open_store(path: str, log: Callable[[str], None]) -> CompletionStore:
    """Opens the completion store, saying when it holds completions under keys of an earlier build."""
    store = CompletionStore(path)
    legacy = store.legacy_count()
    if legacy:
        log(
            f"completion store {path}: {legacy} completions are stored under the question keys of an "
            "earlier build (<source>/<release id>); keys now hash the question's content (records.Question.key), "
            "so those are not reused and their samples are requested again (delete the old rows or the file to "
            "reclaim the space)"
        )
    return store


def prepare(
    config: ml_collections.ConfigDict, source_root: str | None
) -> tuple[Recipe, str]:
    """Loads the config's plugins and checks the recipe: (recipe, source root).

    Raises:
      RecipeError: a missing source path, an unregistered adapter or teacher kind, a bad field (each named).
      PluginError: a module of `config.plugins` cannot be loaded.
    """
    load_plugins(config.get("plugins", ()))
    recipe = Recipe.from_config(config)
    source_root = source_root or recipe.source_root
    check_registered(recipe)
    check_paths(recipe, source_root)
    return recipe, source_root


def run_build(
    config: ml_collections.ConfigDict,
    *,
    out_dir: str | None = None,
    source_root: str | None = None,
    dry_run: bool = False,
    num_shards: int = 1,
    shard_index: int = 0,
    progress: bool = True,
    teacher_factory: Callable[..., Teacher] | None = None,
    log: Callable[[str], None] = print,
) -> BuildResult:
    """Runs one build job of a recipe in this process (all of it when num_shards is 1).

    The same stages run distributed on Apache Beam (`data_pipeline.beam_build.run_beam_build`), with
    byte-identical output.

    Args:
      config: the recipe file's ConfigDict (a `recipe` field, read as a `Recipe`; `plugins`, loaded first).
      out_dir: output folder (default `recipe.out_dir`).
      source_root: folder that relative source paths are under (default `recipe.source_root`).
      dry_run: read, shard, subset and decontaminate, then report what would be requested; call nothing.
      num_shards: number of build jobs; questions go to job `shard_of(question.key, num_shards)`.
      shard_index: this job.
      progress: show tqdm bars.
      teacher_factory: builds teachers from recipe settings (default `teachers.make_teacher`).
      log: where the summary goes.

    Returns:
      A BuildResult. Shards and manifest (partial when sharded) are written under out_dir.

    Raises:
      RecipeError: a missing source path, an unregistered adapter or teacher kind, a bad field (each named).
      PluginError: a module of `config.plugins` cannot be loaded.
    """
    recipe, source_root = prepare(config, source_root)
    out_dir = out_dir or recipe.out_dir
    if not 0 <= shard_index < num_shards:
        raise RecipeError(f"--shard_index {shard_index} not in [0, {num_shards})")
    make = teacher_factory or make_teacher
    tally = Tally()
    stats = tally.stats
    accounting = Accounting()
    dry_requests: collections.Counter = collections.Counter()
    reads: dict[str, Any] = {}  # source -> its ReadReport: per input file, what became of the rows
    decontam = _decontaminator(recipe, log) if recipe.decontamination.enabled else None
    os.makedirs(out_dir, exist_ok=True)
    store = open_store(store_path(recipe, out_dir, shard_index, num_shards), log)
    writer = (
        None
        if dry_run
        else TraceWriter(
            out_dir, shard_index=shard_index, num_shards=num_shards, files_per_source=int(recipe.files_per_source)
        )
    )
    tokens = _TokenCounter(stats)
    subsets = select_subsets(recipe, source_root, log)
    try:
        for key in sorted(recipe.sources):
            entry = recipe.sources[key]
            if writer is not None:
                writer.declare_source(key)
            ends = make_endpoints(recipe, make, image_root(entry, source_root))

            # Stage 1: read, shard, subset, decontaminate.
            read_bar = _bar(progress, f"read {key}", 0)
            same = SameKey()
            subset = subsets.get(key)

            def questions(
                key: str = key, entry: Any = entry, subset: Subset | None = subset, read_bar: Any = read_bar,
                same: SameKey = same,
            ):
                reader = ReportedRead(
                    functools.partial(_read, entry, source_root, recipe), _resolve(source_root, entry.path)
                )
                reads[key] = reader.report
                for item in reader:
                    read_bar.update(1)
                    if isinstance(item, Skipped) and item.reason == NOT_READ:  # a whole file: in the file table
                        continue
                    if isinstance(item, Rejected | Skipped):  # a row that is no question: counted
                        if shard_of(f"{key}#{item.index}", num_shards) == shard_index:
                            count_row(stats, key, item)
                        continue
                    q = item if isinstance(item, Question) else item.question
                    if shard_of(q.key, num_shards) != shard_index:
                        continue
                    s = stats[(key, q.category)]
                    s.questions_in += 1
                    # one question per content key: exact copies share every completion
                    why = same.check(q) or screen(q, subset) or (decontam.reason(q) if decontam else None)
                    if why is not None:
                        s.dropped[why] += 1
                        continue
                    yield item

            ready: collections.deque = collections.deque()

            def fresh(items: Iterator[Any], ready: collections.deque = ready) -> Iterator[Question]:
                """Questions that need teacher calls; released traces go straight to rejection."""
                for it in items:
                    if isinstance(it, Question):
                        yield it
                    else:
                        ready.append(released_result(it))

            stream: Iterator[Question] = fresh(questions())

            if dry_run:
                for q in stream:
                    for t, n in ((ends.teachers[q.category], int(recipe.teachers[q.category].n)),
                                 (ends.judge, int(recipe.filters.judge.n)),
                                 (ends.student, int(recipe.filters.student_pass_rate.n))):
                        if t is not None:
                            dry_requests[t.name] += len(store.missing(q, t, n))
                    stats[(key, q.category)].questions_kept += 1
                for r in ready:
                    stats[(key, r.question.category)].questions_kept += 1
                _log_conflicts(key, same.conflicts, log)
                read_bar.close()
                continue

            # Stages 2 and 3: filters, teacher sampling, rejection sampling.
            sample_bar = _bar(progress, f"sample {key}", 1)
            for t in sample_and_accept(
                recipe, ends, store, key, stream, ready, tally, tokens, accounting, lambda b=sample_bar: b.update(1)
            ):
                writer.add(t, source=key)
            _log_conflicts(key, same.conflicts, log)
            read_bar.close()
            sample_bar.close()
        tokens.flush()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        store.close()

    read_reports = {k: r.to_dict() for k, r in sorted(reads.items())}
    report = decontam.report() if decontam is not None else None
    manifest = None
    if writer is not None:
        manifest = finish_manifest(
            config, tally, writer.close(), out_dir, read_reports, report, shard_index=shard_index,
            num_shards=num_shards,
        )
    table = build_table(read_reports, stats, dry_requests if dry_run else None, accounting, report)
    log(table)
    return BuildResult(manifest, stats, accounting, dict(dry_requests), table, read_reports)


def _log_conflicts(key: str, conflicts: Sequence[tuple[str, str, str, str]], log: Callable[[str], None]) -> None:
    """Names the first questions that the release repeats with another answer (counted `conflicting_duplicate`)."""
    if conflicts:
        pairs = "; ".join(f"{a} ({x}) and {b} ({y})" for a, x, b, y in conflicts)
        log(
            f"{key}: the same question (text, options, images) appears with different answers; the first is kept: "
            f"{pairs}"
        )


def _with_ready(results: Iterator[SampleResult], ready: collections.deque) -> Iterator[SampleResult]:
    """Interleaves released-trace results (queued while reading) with teacher results."""
    for r in results:
        while ready:
            yield ready.popleft()
        yield r
    while ready:
        yield ready.popleft()


def _judge_stage(stream, judge, store, f_cfg, tally, key, concurrency, accounting):  # noqa: ANN001
    """Keeps questions whose judged difficulty is within [lo, hi]."""
    n = int(f_cfg.judge.n)
    for res in sample_questions(judge, stream, store, n=n, concurrency=concurrency, accounting=accounting):
        tally.note_usage(res.completions)
        s = tally.stats[(key, res.question.category)]
        score = flt.judge_score(res.completions)
        if res.error is not None:
            s.dropped["judge_error"] += 1
        elif score is None:
            s.dropped["judge_unparsed"] += 1
        elif not flt.judge_keep(score, int(f_cfg.judge.lo), int(f_cfg.judge.hi)):
            s.dropped["judge_difficulty"] += 1
        else:
            yield res.question


def _student_stage(stream, student, store, f_cfg, tally, key, concurrency, accounting):  # noqa: ANN001
    """Keeps questions the student solves lo..hi times of n."""
    cfg = f_cfg.student_pass_rate
    for res in sample_questions(student, stream, store, n=int(cfg.n), concurrency=concurrency, accounting=accounting):
        tally.note_usage(res.completions)
        s = tally.stats[(key, res.question.category)]
        if res.error is not None:
            s.dropped["student_error"] += 1
        elif not flt.pass_rate_keep(flt.count_correct(res.question, res.completions), int(cfg.lo), int(cfg.hi)):
            s.dropped["student_pass_rate"] += 1
        else:
            yield res.question


def select_subsets(recipe: Recipe, source_root: str, log: Callable[[str], None]) -> dict[str, Subset]:
    """The seeded subset of every source that has one (`data_pipeline.subset`), the same in every build job.

    Each source that needs one is read keys-only first (images unread): every source when
    `recipe.subset.questions` is set (the allocation needs every source's count), else the sources with a
    `max_questions` cap. Every job of a sharded build reads all of their keys, so all jobs select the same global
    subset and each keeps its own share of it.

    Raises:
      RecipeError: `recipe.subset` or a `max_questions` is not a count (named).
    """
    cfg = recipe.subset
    n = cfg.get("questions", 0)
    stratify = cfg.get("stratify_classes", True)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise RecipeError(f"recipe.subset.questions = {n!r}: want a count of questions (0 = all)")
    if not isinstance(stratify, bool):
        raise RecipeError(f"recipe.subset.stratify_classes = {stratify!r}: want True or False")
    caps = {k: recipe.sources[k].max_questions for k in recipe.sources}
    for k, cap in caps.items():
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise RecipeError(f"recipe.sources.{k}.max_questions = {cap!r}: want a count of questions (0 = all)")
    needed = sorted(k for k in recipe.sources if n or caps[k])
    if not needed:
        return {}

    def questions(entry: ml_collections.ConfigDict) -> Iterator[Question]:
        for item in _read(entry, source_root, recipe, keys_only=True):
            q = item if isinstance(item, Question) else getattr(item, "question", None)
            if q is not None:
                yield q

    pools = {
        k: pool_of(questions(recipe.sources[k]), seed=int(recipe.seed), stratify_classes=stratify) for k in needed
    }
    subsets = select(pools, caps, n, int(recipe.seed))
    chosen = ", ".join(f"{k} {len(s)} of {s.pool_size}" for k, s in sorted(subsets.items()))
    log(f"subset (seed {recipe.seed}, N={n or 'all'}): {sum(map(len, subsets.values()))} questions: {chosen}")
    return subsets


def _decontaminator(recipe: Recipe, log: Callable[[str], None]) -> Any:
    """A `decontam.Decontaminator` over the registry's benchmarks named by `recipe.decontamination`.

    Raises:
      RecipeError: an unknown benchmark name, or a missing benchmark under `require_all_benchmarks` (named).
    """
    from data_pipeline.decontam import DecontamConfig, from_registry
    from data_pipeline.sources import ImageSettings

    d = recipe.decontamination
    cfg = DecontamConfig(
        ngram=int(d.ngram),
        image_exact=bool(d.image_exact),
        image_hamming=None if int(d.image_hamming) < 0 else int(d.image_hamming),
        dedup_exact=bool(d.dedup_exact),
        near_jaccard=float(d.near_jaccard) or None,
    )
    try:
        return from_registry(
            d.benchmarks,
            d.benchmark_dir,
            cfg,
            images=ImageSettings(max_pixels=int(recipe.images.max_source_pixels)),
            require_all=bool(d.require_all_benchmarks),
            warn=log,
        )
    except KeyError as e:
        raise RecipeError(f"recipe.decontamination.benchmarks = {d.benchmarks!r}: {e.args[0]}") from e
    except FileNotFoundError as e:
        raise RecipeError(
            f"{e} (recipe.decontamination.benchmark_dir = {d.benchmark_dir!r}; put the release there, or set "
            "require_all_benchmarks=False to build with a warning)"
        ) from e


def decontamination_table(report: Mapping[str, Any]) -> str:
    """A plain-text table: per benchmark, what was indexed and the training questions each match removed.

    Args:
      report: `Decontaminator.report()` (the manifest's `decontamination`).
    """
    head = f"{'benchmark':<18}{'questions':>10}{'images':>8}{'ngram':>8}{'image_exact':>13}{'image_near':>12}"
    lines = [head, "-" * len(head)]
    for name, b in report["benchmarks"].items():
        r = report["removed"][name]
        if not b["checked"]:
            lines.append(f"{name:<18}NOT CHECKED: {b['error']}")
            continue
        lines.append(
            f"{name:<18}{b['questions']:>10}{b['images']:>8}{r['ngram']:>8}{r['image_exact']:>13}{r['image_near']:>12}"
        )
    lines.append(
        f"within training: duplicate_exact={report['duplicate_exact']}, near_duplicate={report['near_duplicate']}"
    )
    return "\n".join(lines)


_MAX_NOT_READ_SHOWN = 20  # per source in the printed table; the manifest lists them all


def file_table(reads: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table: per source and input file, rows read, questions, rejected and skipped rows (with
    their reasons), then the files present under the source path but not read.

    Args:
      reads: source -> `{"input_files": {file: counts}, "not_read": [...]}` (`ReadReport.to_dict`, or the
        manifest's `sources`, whose entries without `input_files` are left out).
    """
    reads = {src: r for src, r in reads.items() if "input_files" in r}
    width = max([len("file"), *(len(f) for r in reads.values() for f in r["input_files"])])
    head = f"{'source':<18}{'file':<{width}}{'rows':>9}{'questions':>11}{'rejected':>10}{'skipped':>9}  reasons"
    lines = [head, "-" * len(head)]
    for src, r in sorted(reads.items()):
        for file, c in sorted(r["input_files"].items()):
            reasons = [f"{k}={v}" for k, v in sorted(c["rejected"].items())]
            reasons += [f"skipped:{k}={v}" for k, v in sorted(c["skipped"].items())]
            lines.append(
                f"{src:<18}{file:<{width}}{c['rows']:>9}{c['questions']:>11}{sum(c['rejected'].values()):>10}"
                f"{sum(c['skipped'].values()):>9}  {', '.join(reasons)}".rstrip()
            )
        unread = r["not_read"]
        if unread:
            more = len(unread) - _MAX_NOT_READ_SHOWN
            shown = ", ".join(unread[:_MAX_NOT_READ_SHOWN]) + (f", ... and {more} more" if more > 0 else "")
            lines.append(f"{src:<18}not read ({len(unread)}): {shown}")
    return "\n".join(lines)


def summary_table(stats: ManifestStats, dry_requests: Mapping[str, int] | None, accounting: Accounting) -> str:
    """A plain-text table: per source and category, what came in, what was kept, and why the rest went."""
    head = f"{'source':<18}{'category':<18}{'in':>9}{'kept':>9}{'traces':>10}{'accept':>8}{'tokens':>12}  dropped"
    lines = [head, "-" * len(head)]
    for (src, cat), s in sorted(stats.by.items()):
        acc = f"{s.samples_correct / s.samples:.2f}" if s.samples else "-"
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(s.dropped.items()))
        lines.append(
            f"{src:<18}{cat:<18}{s.questions_in:>9}{s.questions_kept:>9}{s.traces_kept:>10}{acc:>8}"
            f"{s.response_tokens:>12}  {dropped}"
        )
    t = stats.totals()
    lines.append("-" * len(head))
    acc = f"{t.samples_correct / t.samples:.2f}" if t.samples else "-"
    lines.append(
        f"{'total':<36}{t.questions_in:>9}{t.questions_kept:>9}{t.traces_kept:>10}{acc:>8}{t.response_tokens:>12}"
    )
    if dry_requests is not None:
        lines.append(
            "dry run: samples to request " + (", ".join(f"{k}={v}" for k, v in sorted(dry_requests.items())) or "none")
        )
    for name, u in accounting.to_dict().items():
        lines.append(
            f"teacher {name}: {u['requests']} requests, {u['failures']} failed, {u['prompt_tokens']} prompt + "
            f"{u['completion_tokens']} completion tokens, ${u['cost_usd']:.4f} this run"
        )
    return "\n".join(lines)


def define_flags(flag_values: flags.FlagValues) -> None:
    """The build's flags besides `--config` (see `configs.cli`)."""
    flags.DEFINE_string("out", None, "output folder (default: the recipe's out_dir)", flag_values=flag_values)
    flags.DEFINE_string("source_root", None, "folder that relative source paths are under", flag_values=flag_values)
    flags.DEFINE_bool("dry_run", False, "report counts and requests to make; call no teacher", flag_values=flag_values)
    flags.DEFINE_integer("num_shards", 1, "number of build jobs (questions split by a hash of their key)",
                         flag_values=flag_values)
    flags.DEFINE_integer("shard_index", 0, "this build job", flag_values=flag_values)
    flags.DEFINE_bool("merge", False, "combine the partial manifests of a sharded build into manifest.json",
                      flag_values=flag_values)
    flags.DEFINE_bool("no_progress", False, "hide progress bars", flag_values=flag_values)
    flags.DEFINE_string("runner", None, "run the build as an Apache Beam pipeline on this runner (DirectRunner, "
                        "DataflowRunner, FlinkRunner, SparkRunner; docs/beam_build.md); default: in this process",
                        flag_values=flag_values)
    flags.DEFINE_string("beam_args", "", "more Beam pipeline options, one shell-quoted string, e.g. "
                        "\"--direct_num_workers=2 --direct_running_mode=multi_processing\"", flag_values=flag_values)


def main(argv: Sequence[str]) -> None:
    """The CLI: `python -m data_pipeline.build --config=NAME [--config.x.y=v ...] [flags]`.

    Args:
      argv: the command line, program first (callable in-process: flags are parsed into a fresh FlagValues).

    Exits (SystemExit) with a message naming the field when the config cannot be built.
    """
    from configs.cli import parse_cli

    config, f = parse_cli(argv, program="build", doc=__doc__, define_flags=define_flags)
    try:
        out = f.out or Recipe.from_config(config).out_dir
        if not out:
            raise RecipeError("recipe.out_dir is empty for this config: give --out=DIR")
        if f.merge:
            m = merge_manifests(out)
            print(file_table(m["sources"]))
            print(summary_table(ManifestStats.from_dict(m["sources"]), None, Accounting()))
            print(f"wrote {os.path.join(out, MANIFEST)} from {m['num_shards']} partial manifests")
            return
        if f.runner:
            if f.dry_run or f.num_shards > 1:
                raise RecipeError("--runner builds everything in one pipeline: drop --dry_run and --num_shards")
            from data_pipeline.beam_build import run_beam_build

            run_beam_build(config, out_dir=out, source_root=f.source_root, runner=f.runner, beam_args=f.beam_args)
            return
        run_build(
            config,
            out_dir=out,
            source_root=f.source_root,
            dry_run=f.dry_run,
            num_shards=f.num_shards,
            shard_index=f.shard_index,
            progress=not f.no_progress,
        )
    except (RecipeError, PluginError, StorageError, ManifestError, LayoutError) as e:
        sys.exit(f"build: {e}")


if __name__ == "__main__":
    main(sys.argv)
