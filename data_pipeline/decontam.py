"""Decontamination against benchmarks and deduplication within training, streamed.

Benchmark side (held in memory, small): hashes of every word 16-gram of every benchmark question, the
decoded-pixel hash and the 64-bit dHash of every benchmark image. Training side (streamed, one question at
a time): a question is dropped, with the first reason that applies, when

- `benchmark_ngram`: it shares a word n-gram (16 by default; normalised: lowercase, punctuation removed)
  with a benchmark question. Texts shorter than n words are compared whole.
- `benchmark_image_exact`: one of its images has the same decoded pixels as a benchmark image (so a PNG
  re-saved as BMP or lossless WebP still matches; the paper hashes bytes, which misses re-encodings).
- `benchmark_image_near`: one of its images is within `image_hamming` bits of a benchmark image's dHash
  (beyond the paper: catches brightened, rescaled or recompressed copies).
- `duplicate_exact`: an earlier kept training question has the same normalised text, the same set of
  option texts and the same images.
- `duplicate_near`: an earlier kept question with the same images has MinHash-estimated word-shingle
  Jaccard similarity >= `near_jaccard` (LSH buckets find the candidates; their signatures confirm).

The first occurrence is kept, so the outcome depends on input order; the build feeds questions in a
deterministic order.

Before all of that, always on: `SameKey` merges the questions of one source that share a content key
(`Question.key`: source, text, options in order, image bytes): `duplicate_question` when the copy has the
same answer, `conflicting_duplicate` when the release gives the same question another answer.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence

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
_MERSENNE = np.uint64((1 << 61) - 1)


@dataclasses.dataclass(frozen=True)
class DecontamConfig:
    """Decontamination settings; None disables a check.

    Attributes:
      ngram: word n-gram length shared with a benchmark question that drops a training question.
      include_options: compare the stem and the option texts (not just the stem).
      image_exact: drop training images whose decoded pixels equal a benchmark image's.
      image_hamming: drop training images within this many dHash bits of a benchmark image (None: off).
      dedup_exact: drop exact duplicates within training.
      near_jaccard: drop near duplicates within training at this estimated Jaccard (None: off).
      shingle: word shingle length for near-duplicate MinHash.
      num_perm: MinHash permutations; must be bands * rows.
      bands: LSH bands (more bands: more candidates checked, fewer near duplicates missed).
      seed: MinHash permutation seed.
    """

    ngram: int = 16
    include_options: bool = True
    image_exact: bool = True
    image_hamming: int | None = 6
    dedup_exact: bool = True
    near_jaccard: float | None = 0.8
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
    """The benchmark questions and images that training must not contain."""

    def __init__(self, config: DecontamConfig = DecontamConfig()):
        self.config = config
        self.ngrams: set[int] = set()
        self.pixel_hashes: set[str] = set()
        self._dhashes: list[int] = []
        self._dhash_array: np.ndarray | None = None
        self.num_questions = 0

    def add(self, q: Question) -> None:
        """Indexes one benchmark question and its images (images with no bytes are skipped)."""
        self.num_questions += 1
        self.ngrams |= ngram_hashes(question_text(q, include_options=self.config.include_options), self.config.ngram)
        for im in q.images:
            if im.data:
                self.add_image(im.data)

    def add_image(self, data: bytes) -> None:
        """Indexes one benchmark image (encoded bytes)."""
        self.pixel_hashes.add(imglib.pixel_hash(data))
        self._dhashes.append(imglib.dhash(data))
        self._dhash_array = None

    def add_all(self, questions: Iterable[Question]) -> BenchmarkIndex:
        """Indexes every question; returns self."""
        for q in questions:
            self.add(q)
        return self

    def shares_ngram(self, q: Question) -> bool:
        """Whether the question shares a word n-gram with any benchmark question."""
        text = question_text(q, include_options=self.config.include_options)
        return not self.ngrams.isdisjoint(ngram_hashes(text, self.config.ngram))

    def nearest_image_distance(self, dhash: int) -> int | None:
        """Smallest dHash Hamming distance to a benchmark image (None without benchmark images)."""
        if not self._dhashes:
            return None
        if self._dhash_array is None:
            self._dhash_array = np.asarray(self._dhashes, dtype=np.uint64)
        return int(np.bitwise_count(self._dhash_array ^ np.uint64(dhash)).min())


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

    def check(self, q: Question, image_keys: Sequence[str]) -> str | None:
        """The duplicate reason for `q`, or None (then `q` is remembered as kept).

        Args:
          q: a training question.
          image_keys: one key per image of `q` (pixel hashes), so that the same stem over different images
            (every classification question) is not a duplicate.
        """
        images = "|".join(image_keys)
        options = sorted(normalize(t) for t in q.options.values())
        exact_key = hashlib.sha256("\x1f".join([normalize(q.question), *options, images]).encode()).digest()
        if self.config.dedup_exact and exact_key in self._exact:
            return "duplicate_exact"
        bands: list[tuple[str, int, bytes]] = []
        signature = None
        if self.config.near_jaccard is not None:
            signature = self._signature(question_text(q))
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
    """Benchmark decontamination then within-training deduplication, counting drops by reason.

    Example:
        dec = Decontaminator(benchmark_questions)
        kept = list(dec.filter(training_questions))
        manifest["dropped"].update(dec.counts)
    """

    def __init__(self, benchmarks: Iterable[Question] = (), config: DecontamConfig = DecontamConfig()):
        self.config = config
        self.index = BenchmarkIndex(config).add_all(benchmarks)
        self.dedup = Deduplicator(config)
        self.counts: Counter[str] = Counter()  # dropped questions by reason
        self.stats: Counter[str] = Counter()  # non-drop events (images without bytes, questions seen)

    def reason(self, q: Question) -> str | None:
        """Why `q` must be dropped, or None to keep it (kept questions enter the dedup index)."""
        self.stats["questions"] += 1
        if self.index.ngrams and self.index.shares_ngram(q):
            return "benchmark_ngram"
        keys = []
        for im in q.images:
            if not im.data:
                # Path-only refs cannot be hashed here; count them so a manifest shows the gap.
                self.stats["image_unchecked"] += 1
                keys.append(f"path:{im.path}")
                continue
            try:
                pixels = imglib.pixel_hash(im.data)
                if self.config.image_exact and pixels in self.index.pixel_hashes:
                    return "benchmark_image_exact"
                if self.config.image_hamming is not None:
                    distance = self.index.nearest_image_distance(imglib.dhash(im.data))
                    if distance is not None and distance <= self.config.image_hamming:
                        return "benchmark_image_near"
            except (OSError, ValueError, BadRecordError):
                return "corrupt_image"
            keys.append(pixels)
        if self.config.dedup_exact or self.config.near_jaccard is not None:
            return self.dedup.check(q, keys)
        return None

    def filter(self, questions: Iterable[Question]) -> Iterator[Question]:
        """Yields the questions to keep; `counts` gains one entry per dropped question."""
        for q in questions:
            why = self.reason(q)
            if why is None:
                yield q
            else:
                self.counts[why] += 1
