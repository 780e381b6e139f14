"""Seeded question subsets: a recipe-level sample of N questions and per-source caps, class-stratified.

A question's place in every subset is decided by one seeded hash of its content key
(`stable_hash("subset", seed, key)`): within a stratum the lowest hashes are chosen. So a subset depends only on
the seed, the sizes asked for and the pool of questions, never on the response format, teacher, K or filters:
two arms of an ablation over the same sources train on the same questions.

The pool is every source's distinct questions (exact copies, which share a key, count once), read keys-only
before the build (images are read for their bytes, not decoded). Selection, in order:

1. `max_questions` of a source (a cap; 0 = none) keeps that many of its questions;
2. `recipe.subset.questions` = N (0 = all) samples N questions from the capped pool: each source gets a share
   proportional to its question count, rounded by largest remainder so the shares sum to exactly N
   (ties go to the source whose name sorts first); N at least the pool keeps everything.

Within a source, questions are stratified: a classification question (category `mm_classification`) by its
class, the answer's option text, when `recipe.subset.stratify_classes` (the default); every other question is
in one stratum. A source's share is split equally over its strata; a stratum smaller than its share gives all
of its questions and what it could not give is shared equally among the others (`class_shares`).

Decontamination, the validity checks and the filters run after the subset, so fewer than N questions may be
kept; each one dropped from the pool by the subset is counted `not_in_subset` in the manifest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from data_pipeline.hashing import stable_hash
from data_pipeline.records import Question

ONE_STRATUM = ""  # the stratum of questions that are not stratified (not classification, or stratification off)


def key_hash(seed: int, key: str) -> int:
    """The seeded hash that orders a question (by its content key) in every subset of that seed."""
    return stable_hash("subset", seed, key)


def stratum_of(question: Question, *, stratify_classes: bool) -> str:
    """A classification question's class (its answer's option text) when stratifying; otherwise `ONE_STRATUM`."""
    if stratify_classes and question.category == "mm_classification":
        return question.options[question.answer]
    return ONE_STRATUM


def largest_remainder(counts: Mapping[str, int], n: int) -> dict[str, int]:
    """Splits n over `counts` in proportion, each share at most its count, summing to exactly min(n, total).

    Each name gets floor(n * count / total); the units left go one each to the largest remainders (ties: the
    name that sorts first). With n <= total no share exceeds its count.
    """
    total = sum(counts.values())
    if n >= total:
        return dict(counts)
    shares = {k: n * c // total for k, c in counts.items()}
    order = sorted(counts, key=lambda k: (-(n * counts[k] % total), k))
    for k in order[: n - sum(shares.values())]:
        shares[k] += 1
    return shares


def class_shares(sizes: Mapping[str, int], n: int, seed: int) -> dict[str, int]:
    """Equal shares of n per class, summing to exactly min(n, total).

    Water-filling: classes from smallest up; a class no larger than an equal share of what is left gives all its
    questions, and the rest is shared equally by the larger classes. When the remainder does not divide, the
    extra units go one each to the classes with the lowest seeded hash of their name (not always the same
    names, and the same for every arm with this seed).
    """
    shares: dict[str, int] = {}
    left = min(n, sum(sizes.values()))
    pending = sorted(sizes, key=lambda c: (sizes[c], c))
    while pending and sizes[pending[0]] * len(pending) <= left:
        c = pending.pop(0)
        shares[c] = sizes[c]
        left -= sizes[c]
    if pending:
        base, extra = divmod(left, len(pending))
        lucky = set(sorted(pending, key=lambda c: (stable_hash("subset-class", seed, c), c))[:extra])
        shares.update({c: base + (c in lucky) for c in pending})
    return shares


@dataclasses.dataclass
class SourcePool:
    """One source's distinct questions, as sorted seeded hashes per stratum (class, or `ONE_STRATUM`)."""

    strata: dict[str, list[int]]

    @property
    def size(self) -> int:
        return sum(len(h) for h in self.strata.values())

    def take(self, n: int, seed: int) -> SourcePool:
        """n questions (all when n >= size): each stratum's share (`class_shares`) of its lowest hashes."""
        shares = class_shares({s: len(h) for s, h in self.strata.items()}, n, seed)
        return SourcePool({s: h[: shares[s]] for s, h in self.strata.items() if shares[s]})

    def hashes(self) -> frozenset[int]:
        return frozenset(h for hs in self.strata.values() for h in hs)


def pool_of(questions: Iterable[Question], *, seed: int, stratify_classes: bool) -> SourcePool:
    """A source's pool from its questions (in read order); an exact copy counts once, in its first stratum."""
    seen: set[int] = set()
    strata: dict[str, list[int]] = {}
    for q in questions:
        h = key_hash(seed, q.key)
        if h not in seen:
            seen.add(h)
            strata.setdefault(stratum_of(q, stratify_classes=stratify_classes), []).append(h)
    return SourcePool({s: sorted(hs) for s, hs in strata.items()})


@dataclasses.dataclass(frozen=True)
class Subset:
    """The questions of one source chosen for a build; `key in subset` tests a question's content key."""

    seed: int
    hashes: frozenset[int]
    pool_size: int  # the source's distinct questions before any cap or sample

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key_hash(self.seed, key) in self.hashes

    def __len__(self) -> int:
        return len(self.hashes)


def select(pools: Mapping[str, SourcePool], caps: Mapping[str, int], questions: int, seed: int) -> dict[str, Subset]:
    """Each source's subset: its cap (`max_questions`, 0 = none) first, then N = `questions` (0 = all) over all.

    Args:
      pools: source -> its pool (every source of the recipe when `questions` > 0).
      caps: source -> max_questions (missing or 0: no cap).
      questions: N, the recipe-level sample size.
      seed: the recipe seed.

    Returns:
      source -> Subset, for every source of `pools`.
    """
    capped = {s: p.take(caps[s], seed) if caps.get(s) else p for s, p in pools.items()}
    if questions:
        shares = largest_remainder({s: p.size for s, p in capped.items()}, questions)
        capped = {s: p.take(shares[s], seed) for s, p in capped.items()}
    return {s: Subset(seed, p.hashes(), pools[s].size) for s, p in capped.items()}
