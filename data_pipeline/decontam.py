"""Decontamination against benchmarks and deduplication within training, streamed.

Benchmark side (held in memory, small): hashes of every word 16-gram of every benchmark question and the
decoded-pixel hash of every benchmark image, each remembering the benchmark it came from (the first in
registry order when several share it), so drops are counted per benchmark. `from_registry` reads the
benchmarks of `data_pipeline.benchmarks` (every one by default: the same sets that `evaluate` scores).
Training side (streamed, one question at a time): a question is dropped, with the first reason that
applies, when

- `benchmark_ngram`: it shares a word n-gram (16 by default; normalised: lowercase, punctuation removed)
  with a benchmark question. Texts shorter than n words are compared whole. A classification benchmark
  question is not indexed by text: its text is the adapter's template (the same stem and class names for
  every image), so only its image identifies it.
- `benchmark_image_exact`: one of its images has the same decoded pixels as a benchmark image. The paper
  drops images whose bytes hash equals a benchmark image's (docs/paper.md, "Decontamination"); equal bytes
  decode to equal pixels, so this is a superset that also catches a PNG re-saved as BMP or lossless WebP.
- `benchmark_image_near` (extra, off by default): one of its images is within `image_hamming` bits of a
  benchmark image's dHash (catches brightened, rescaled or recompressed copies).
- `duplicate_exact`: an earlier kept training question has the same normalised text, the same set of
  option texts and the same images.
- `duplicate_near` (extra, off by default): an earlier kept question with the same images has
  MinHash-estimated word-shingle Jaccard similarity >= `near_jaccard` (LSH buckets find the candidates;
  their signatures confirm).

The paper's method (16-gram + exact image hash) is the default; each extra is counted apart (`report`).
The first occurrence is kept, so the outcome depends on input order; the build feeds questions in a
deterministic order.

Before all of that, always on: `SameKey` merges the questions of one source that share a content key
(`Question.key`: source, text, options in order, image bytes): `duplicate_question` when the copy has the
same answer, `conflicting_duplicate` when the release gives the same question another answer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from data_pipeline import images as imglib
from data_pipeline.answers import normalize
from data_pipeline.records import BadRecordError, Question

REASONS: tuple[str, ...] = (
    "benchmark_ngram",
    "benchmark_image_exact",
    "benchmark_image_near",
    "duplicate_exact",
    "duplicate_near",
    "corrupt_image",
)
# How a benchmark contaminates a training question: the per-benchmark counts of `Decontaminator.report`.
BENCHMARK_MATCHES: dict[str, str] = {
    "benchmark_ngram": "ngram",
    "benchmark_image_exact": "image_exact",
    "benchmark_image_near": "image_near",
}
_MERSENNE = np.uint64((1 << 61) - 1)


@dataclasses.dataclass(frozen=True)
class DecontamConfig:
    """Decontamination settings; None disables a check. The defaults are the paper's method plus exact dedup.

    Attributes:
      ngram: word n-gram length shared with a benchmark question that drops a training question.
      include_options: compare the stem and the option texts (not just the stem).
      image_exact: drop training images whose decoded pixels equal a benchmark image's.
      image_hamming: drop training images within this many dHash bits of a benchmark image (extra; None: off).
      dedup_exact: drop exact duplicates within training.
      near_jaccard: drop near duplicates within training at this estimated Jaccard (extra; None: off).
      shingle: word shingle length for near-duplicate MinHash.
      num_perm: MinHash permutations; must be bands * rows.
      bands: LSH bands (more bands: more candidates checked, fewer near duplicates missed).
      seed: MinHash permutation seed.
    """

    ngram: int = 16
    include_options: bool = True
    image_exact: bool = True
    image_hamming: int | None = None
    dedup_exact: bool = True
    near_jaccard: float | None = None
    shingle: int = 5
    num_perm: int = 64
    bands: int = 16
    seed: int = 0


def question_text(q: Question, *, include_options: bool = True) -> str:
    """The text that is compared: the stem, then the option texts."""
    return " ".join([q.question, *q.options.values()]) if include_options else q.question


def _h64(text: str) -> int:
    # A keyed-free, process-independent 64-bit hash: runs must decide the same way every time.
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def ngram_hashes(text: str, n: int) -> set[int]:
    """Hashes of every word n-gram of the normalised text; a text shorter than n words is one gram."""
    words = normalize(text).split()
    if not words:
        return set()
    if len(words) <= n:
        return {_h64(" ".join(words))}
    return {_h64(" ".join(words[i : i + n])) for i in range(len(words) - n + 1)}


class BenchmarkIndex:
    """The benchmark questions and images that training must not contain, each hash naming its benchmark.

    Attributes:
      sets: benchmark -> {"questions", "images", "checked"}: what was indexed; a benchmark whose files are
        missing has `checked` False, its `path` and the `error` that said so.
    """

    def __init__(self, config: DecontamConfig = DecontamConfig()):
        self.config = config
        self.ngrams: dict[int, str] = {}
        self.pixel_hashes: dict[str, str] = {}
        self._dhashes: list[int] = []
        self._dhash_names: list[str] = []
        self._dhash_array: np.ndarray | None = None
        self.sets: dict[str, dict[str, Any]] = {}

    @property
    def num_questions(self) -> int:
        """Benchmark questions indexed, all benchmarks together."""
        return sum(s["questions"] for s in self.sets.values())

    def _set(self, benchmark: str) -> dict[str, Any]:
        return self.sets.setdefault(benchmark, {"questions": 0, "images": 0, "checked": True})

    def add(self, q: Question, benchmark: str = "") -> None:
        """Indexes one benchmark question and its images (images with no bytes are skipped).

        Args:
          q: the benchmark question.
          benchmark: the name counted against (default: the question's source).
        """
        name = benchmark or q.source
        self._set(name)["questions"] += 1
        if q.category != "mm_classification":  # a classification stem is a template: the image is the question
            text = question_text(q, include_options=self.config.include_options)
            for h in ngram_hashes(text, self.config.ngram):
                self.ngrams.setdefault(h, name)
        for im in q.images:
            if im.data:
                self.add_image(im.data, name)

    def add_image(self, data: bytes, benchmark: str) -> None:
        """Indexes one benchmark image (encoded bytes) of `benchmark`."""
        self._set(benchmark)["images"] += 1
        self.pixel_hashes.setdefault(imglib.pixel_hash(data), benchmark)
        if self.config.image_hamming is not None:
            self._dhashes.append(imglib.dhash(data))
            self._dhash_names.append(benchmark)
            self._dhash_array = None

    def add_all(self, questions: Iterable[Question], benchmark: str = "") -> BenchmarkIndex:
        """Indexes every question (under `benchmark`, default each question's source); returns self."""
        for q in questions:
            self.add(q, benchmark)
        return self

    def not_checked(self, benchmark: str, path: str, error: str) -> None:
        """Records that `benchmark` could not be read at `path` (`error` says why): listed, unchecked, in the report."""
        self.sets[benchmark] = {"questions": 0, "images": 0, "checked": False, "path": path, "error": error}

    def ngram_match(self, q: Question) -> str | None:
        """The benchmark the question shares a word n-gram with, or None."""
        text = question_text(q, include_options=self.config.include_options)
        return next((self.ngrams[h] for h in ngram_hashes(text, self.config.ngram) if h in self.ngrams), None)

    def nearest_image(self, dhash: int) -> tuple[int, str] | None:
        """(smallest dHash Hamming distance to a benchmark image, its benchmark); None without dHashes."""
        if not self._dhashes:
            return None
        if self._dhash_array is None:
            self._dhash_array = np.asarray(self._dhashes, dtype=np.uint64)
        distances = np.bitwise_count(self._dhash_array ^ np.uint64(dhash))
        i = int(distances.argmin())
        return int(distances[i]), self._dhash_names[i]


def dedup_key(q: Question, image_keys: Sequence[str]) -> bytes:
    """What `duplicate_exact` compares: normalised text, the set of option texts, the images' pixel keys."""
    options = sorted(normalize(t) for t in q.options.values())
    return hashlib.sha256("\x1f".join([normalize(q.question), *options, "|".join(image_keys)]).encode()).digest()


class Deduplicator:
    """Exact and MinHash-LSH near-duplicate detection over a stream; remembers what it keeps."""

    def __init__(self, config: DecontamConfig = DecontamConfig()):
        if config.num_perm % config.bands:
            raise ValueError(f"num_perm {config.num_perm} is not a multiple of bands {config.bands}")
        self.config = config
        self._exact: set[bytes] = set()
        self._buckets: dict[tuple[str, int, bytes], list[int]] = defaultdict(list)
        self._signatures: list[np.ndarray] = []
        rng = np.random.default_rng(config.seed)
        self._a = rng.integers(1, 1 << 32, size=config.num_perm, dtype=np.uint64)
        self._b = rng.integers(0, 1 << 32, size=config.num_perm, dtype=np.uint64)

    def _signature(self, text: str) -> np.ndarray:
        words = normalize(text).split()
        n = self.config.shingle
        shingles = {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}
        base = np.asarray([_h64(s) & 0xFFFFFFFF for s in shingles], dtype=np.uint64)
        # (a*h + b) mod (2^61 - 1) with a, h < 2^32 cannot overflow 64 bits.
        perm = (base[:, None] * self._a[None, :] + self._b[None, :]) % _MERSENNE
        return (perm & np.uint64(0xFFFFFFFF)).min(axis=0).astype(np.uint32)

    def features(self, q: Question, image_keys: Sequence[str]) -> tuple[bytes, str, np.ndarray | None]:
        """What `decide` compares of `q`: (its `dedup_key`, its image keys joined, its MinHash signature or None
        when near-duplicate removal is off). Independent of every other question, so a distributed build
        computes them on the workers and gathers them for `decide`.

        Args:
          q: a training question.
          image_keys: one key per image of `q` (pixel hashes), so that the same stem over different images
            (every classification question) is not a duplicate.
        """
        signature = None if self.config.near_jaccard is None else self._signature(question_text(q))
        return dedup_key(q, image_keys), "|".join(image_keys), signature

    def decide(self, exact_key: bytes, images: str, signature: np.ndarray | None) -> str | None:
        """The duplicate reason for a question's `features`, or None (then they are remembered as kept).

        Greedy in call order: the outcome depends on the order questions are decided in (the build's order).
        """
        if self.config.dedup_exact and exact_key in self._exact:
            return "duplicate_exact"
        bands: list[tuple[str, int, bytes]] = []
        if signature is not None:
            rows = self.config.num_perm // self.config.bands
            bands = [(images, b, signature[b * rows : (b + 1) * rows].tobytes()) for b in range(self.config.bands)]
            candidates = {i for key in bands for i in self._buckets.get(key, ())}
            for i in sorted(candidates):
                if float(np.mean(self._signatures[i] == signature)) >= self.config.near_jaccard:
                    return "duplicate_near"
        self._exact.add(exact_key)
        if signature is not None:
            self._signatures.append(signature)
            for key in bands:
                self._buckets[key].append(len(self._signatures) - 1)
        return None

    def check(self, q: Question, image_keys: Sequence[str]) -> str | None:
        """The duplicate reason for `q`, or None (then `q` is remembered as kept): `decide` on its `features`."""
        return self.decide(*self.features(q, image_keys))


class SameKey:
    """Exact copies within one source (same `Question.key`): the first is kept, later ones are counted.

    Keys hash the content, so a kept question's completions and traces are never shared with another
    question; merging the copies keeps one record per key (two would share every completion). The first
    occurrence's answer is the one trained on; `conflicts` names the ids of the first few copies that the
    release answers differently, for the build log.

    Memory: one entry per distinct question of the source (the build makes one per source).
    """

    MAX_EXAMPLES = 5

    def __init__(self) -> None:
        self._first: dict[str, tuple[str, str]] = {}  # key -> (answer, id) of its first occurrence
        self.conflicts: list[tuple[str, str, str, str]] = []  # (first id, its answer, later id, its answer)

    def check(self, q: Question) -> str | None:
        """None for a key's first question (remembered), else `duplicate_question` or `conflicting_duplicate`."""
        first = self._first.get(q.key)
        if first is None:
            self._first[q.key] = (q.answer, q.id)
            return None
        if first[0] == q.answer:
            return "duplicate_question"
        if len(self.conflicts) < self.MAX_EXAMPLES:
            self.conflicts.append((first[1], first[0], q.id, q.answer))
        return "conflicting_duplicate"


class Decontaminator:
    """Benchmark decontamination then within-training deduplication, counting drops by reason and benchmark.

    Example:
        dec = Decontaminator(benchmark_questions)
        kept = list(dec.filter(training_questions))
        manifest["decontamination"] = dec.report()
    """

    def __init__(self, benchmarks: Iterable[Question] = (), config: DecontamConfig = DecontamConfig()):
        self.config = config
        self.index = BenchmarkIndex(config).add_all(benchmarks)
        self.dedup = Deduplicator(config)
        self.counts: Counter[str] = Counter()  # dropped questions by reason
        self.removed: dict[str, Counter[str]] = defaultdict(Counter)  # benchmark -> match kind -> questions
        self.stats: Counter[str] = Counter()  # non-drop events (images without bytes, questions seen)

    def reason(self, q: Question) -> str | None:
        """Why `q` must be dropped, or None to keep it (kept questions enter the dedup index); drops are counted."""
        why, benchmark, keys = self._benchmark_check(q)
        if why is None and (self.config.dedup_exact or self.config.near_jaccard is not None):
            why = self.dedup.check(q, keys)
        self.count(why, benchmark)
        return why

    def screen(self, q: Question) -> tuple[str | None, list[str]]:
        """The benchmark checks of `reason` without the within-training dedup (a distributed build dedups by
        grouping on `dedup_key(q, image_keys)` instead): (reason or None, the image keys); drops are counted."""
        why, benchmark, keys = self._benchmark_check(q)
        self.count(why, benchmark)
        return why, keys

    def count(self, why: str | None, benchmark: str | None = None) -> None:
        """Counts one dropped question (nothing when `why` is None) in `report`."""
        if why is not None:
            self.counts[why] += 1
            if benchmark is not None:
                self.removed[benchmark][BENCHMARK_MATCHES[why]] += 1

    def reset_counts(self) -> None:
        """Zeroes what `report` counts (the index stays): a worker reports each batch of questions apart."""
        self.counts, self.removed, self.stats = Counter(), defaultdict(Counter), Counter()

    def _benchmark_check(self, q: Question) -> tuple[str | None, str | None, list[str]]:
        """(reason, the benchmark matched or None, the image keys of `q` for dedup)."""
        self.stats["questions"] += 1
        benchmark = self.index.ngram_match(q) if self.index.ngrams else None
        if benchmark is not None:
            return "benchmark_ngram", benchmark, []
        keys: list[str] = []
        for im in q.images:
            if not im.data:
                # Path-only refs cannot be hashed here; count them so a manifest shows the gap.
                self.stats["image_unchecked"] += 1
                keys.append(f"path:{im.path}")
                continue
            try:
                pixels = imglib.pixel_hash(im.data)
                if self.config.image_exact and pixels in self.index.pixel_hashes:
                    return "benchmark_image_exact", self.index.pixel_hashes[pixels], []
                if self.config.image_hamming is not None:
                    nearest = self.index.nearest_image(imglib.dhash(im.data))
                    if nearest is not None and nearest[0] <= self.config.image_hamming:
                        return "benchmark_image_near", nearest[1], []
            except (OSError, ValueError, BadRecordError):
                return "corrupt_image", None, []
            keys.append(pixels)
        return None, None, keys

    def filter(self, questions: Iterable[Question]) -> Iterator[Question]:
        """Yields the questions to keep; `counts` gains one entry per dropped question."""
        for q in questions:
            if self.reason(q) is None:
                yield q

    def report(self) -> dict[str, Any]:
        """What decontamination checked and removed, JSON-able (the manifest's `decontamination`).

        Returns:
          {"method": the settings, "benchmarks": {name: {"questions", "images", "checked"[, "path", "error"]}},
          "removed": {name: {"ngram", "image_exact", "image_near"}} (every benchmark, zeros included),
          "duplicate_exact", "near_duplicate", "corrupt_image", "image_unchecked"}: training questions.
        """
        c = self.config
        return {
            "method": {
                "ngram": c.ngram,
                "include_options": c.include_options,
                "image_exact": c.image_exact,
                "image_hamming": c.image_hamming,
                "dedup_exact": c.dedup_exact,
                "near_jaccard": c.near_jaccard,
            },
            "benchmarks": {name: dict(v) for name, v in sorted(self.index.sets.items())},
            "removed": {
                name: {kind: self.removed[name][kind] for kind in BENCHMARK_MATCHES.values()}
                for name in sorted(set(self.index.sets) | set(self.removed))
            },
            "duplicate_exact": self.counts["duplicate_exact"],
            "near_duplicate": self.counts["duplicate_near"],
            "corrupt_image": self.counts["corrupt_image"],
            "image_unchecked": self.stats["image_unchecked"],
        }


def from_registry(
    benchmarks: str | Sequence[str],
    benchmark_dir: str,
    config: DecontamConfig = DecontamConfig(),
    *,
    images: Any = None,
    require_all: bool = False,
    warn: Callable[[str], None] = print,
) -> Decontaminator:
    """A Decontaminator over benchmarks of the registry (`data_pipeline.benchmarks`), read from local files.

    Args:
      benchmarks: registry names or categories, or "all" (`data_pipeline.benchmarks.select`).
      benchmark_dir: the benchmark folder (each benchmark at its registry path below it), the folder that
        `python -m octomed_jax.evaluate --data_dir` reads.
      config: the checks.
      images: `sources.ImageSettings` for reading benchmark images (None: the adapters' defaults).
      require_all: a missing benchmark raises instead of a warning.
      warn: receives one line per benchmark that is not checked.

    Returns:
      The Decontaminator; a missing benchmark is in its report with `checked: false`.

    Raises:
      FileNotFoundError: `require_all` and a benchmark's files are missing (named, with the setting to change).
      KeyError: an unknown benchmark name.
    """
    from data_pipeline.benchmarks import select

    dec = Decontaminator(config=config)
    for b in select(benchmarks):
        where = b.where(benchmark_dir)
        try:
            if not os.path.exists(where):
                raise FileNotFoundError(f"{where} does not exist")
            # Streamed: a classification test set's images are hashed one by one, never all held.
            for q in b.questions(benchmark_dir, images=images):
                dec.index.add(q, b.name)
        except FileNotFoundError as e:
            if require_all:
                raise FileNotFoundError(f"benchmark {b.name!r} cannot be read for decontamination: {e}") from e
            dec.index.not_checked(b.name, where, str(e))
            warn(f"decontamination: benchmark {b.name!r} NOT checked, training is not decontaminated against it: {e}")
    return dec
