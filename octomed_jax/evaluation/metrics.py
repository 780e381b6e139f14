"""Scores of generated answers: accuracy per benchmark (mean and spread over seeds), majority vote at k, the
reported score (accuracy, or a majority vote's), response length, unparseable answers, and the per-category
and overall means of the paper's Table 2.

Pure Python over `QuestionResult`s, so the scoring is tested on hand-made predictions.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Response:
    """One generated response.

    Attributes:
      text: the decoded response.
      num_tokens: generated tokens (the stop token included).
      answer: the letter `extract_answer` read from it, or None (unparseable).
      finish_reason: "stop" or "length" (truncated by the budget).
    """

    text: str
    num_tokens: int
    answer: str | None
    finish_reason: str = "stop"


@dataclasses.dataclass(frozen=True)
class QuestionResult:
    """All responses to one question: `responses[seed][sample]`."""

    question_id: str
    answer: str
    responses: Sequence[Sequence[Response]]


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent parsed answer; ties go to the answer reached first; None if none parsed."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def _pct(x: float) -> float:
    return round(100.0 * x, 4)


def _mean_std(per_seed: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (0 with one seed), in percent."""
    return _pct(statistics.fmean(per_seed)), _pct(statistics.stdev(per_seed)) if len(per_seed) > 1 else 0.0


def _majority_accuracy(results: Sequence[QuestionResult], seed: int, k: int) -> float:
    """Fraction of questions whose majority answer over seed `seed`'s first k samples is right."""
    short = [r.question_id for r in results if len(r.responses[seed]) < k]
    if short:
        raise ValueError(f"majority of {k}: seed index {seed} has fewer than {k} samples of {short[:3]}; sample n={k}")
    return sum(majority_vote([x.answer for x in r.responses[seed][:k]]) == r.answer for r in results) / len(results)


def benchmark_metrics(
    results: Sequence[QuestionResult], *, majority_k: Sequence[int] = (), majority: int | None = None
) -> dict[str, Any]:
    """Scores one benchmark.

    Accuracy of a seed is the fraction of correct responses among that seed's responses (one per
    question when n=1); `accuracy` is its mean over seeds and `accuracy_std` the sample standard
    deviation (0 with one seed). `majority_at_k[k]` votes over each question's first k responses, seeds
    in order then samples. Percentages are 0..100.

    The reported `score` (what the table shows and the category means average, `evaluation.protocol`) is the
    accuracy, or with `majority=k` the majority-vote accuracy: a seed's score is the fraction of questions whose
    majority over that seed's first k samples is right; `score` is its mean over seeds, `score_std` its spread.

    Returns:
      A JSON-ready dict: num_questions, num_seeds, num_responses, accuracy, accuracy_std,
      accuracy_per_seed, majority_at_k, majority (k or None), score, score_std, score_per_seed,
      mean_response_tokens, truncated, unparseable, unparseable_rate.

    Raises:
      ValueError: seeds with different counts, or a seed with fewer than `majority` samples of a question.
    """
    if not results:
        return {
            "num_questions": 0,
            "num_seeds": 0,
            "num_responses": 0,
            "accuracy": math.nan,
            "accuracy_std": 0.0,
            "accuracy_per_seed": [],
            "majority": majority,
            "score": math.nan,
            "score_std": 0.0,
            "score_per_seed": [],
            "majority_at_k": {},
            "mean_response_tokens": math.nan,
            "truncated": 0,
            "unparseable": 0,
            "unparseable_rate": 0.0,
        }
    num_seeds = len(results[0].responses)
    if any(len(r.responses) != num_seeds for r in results):
        raise ValueError("every question needs the same number of seeds")
    per_seed = []
    for s in range(num_seeds):
        right = total = 0
        for r in results:
            for resp in r.responses[s]:
                right += resp.answer == r.answer
                total += 1
        per_seed.append(right / total if total else math.nan)
    flat = [[resp for seed in r.responses for resp in seed] for r in results]
    all_resp = [x for f in flat for x in f]
    majority_at_k = {}
    for k in majority_k:
        votes = [majority_vote([x.answer for x in f[:k]]) == r.answer for f, r in zip(flat, results, strict=True)]
        majority_at_k[str(k)] = _pct(sum(votes) / len(votes))
    unparseable = sum(x.answer is None for x in all_resp)
    score_per_seed = per_seed if majority is None else [_majority_accuracy(results, s, majority)
                                                        for s in range(num_seeds)]
    accuracy, accuracy_std = _mean_std(per_seed)
    score, score_std = _mean_std(score_per_seed)
    return {
        "num_questions": len(results),
        "num_seeds": num_seeds,
        "num_responses": len(all_resp),
        "accuracy": accuracy,
        "accuracy_std": accuracy_std,
        "accuracy_per_seed": [_pct(a) for a in per_seed],
        "majority_at_k": majority_at_k,
        "majority": majority,
        "score": score,
        "score_std": score_std,
        "score_per_seed": [_pct(a) for a in score_per_seed],
        "mean_response_tokens": round(statistics.fmean(x.num_tokens for x in all_resp), 2),
        "truncated": sum(x.finish_reason == "length" for x in all_resp),
        "unparseable": unparseable,
        "unparseable_rate": _pct(unparseable / len(all_resp)),
    }


def summarize(per_benchmark: Mapping[str, Mapping[str, Any]], categories: Mapping[str, str]) -> dict[str, Any]:
    """Per-category and overall means of the benchmarks' reported scores, as the paper's Table 2 computes them.

    A category mean is the unweighted mean of its benchmarks' `score` (MedQA's majority-vote score under the
    paper's protocol, `evaluation.protocol`); the paper's text mean 67.83 = (90.81 + 82.36 + 72.70 + 24.51 +
    68.75) / 5.

    Args:
      per_benchmark: benchmark name -> `benchmark_metrics` output.
      categories: benchmark name -> category.

    Returns:
      {"categories": {category: {"accuracy": mean score, "benchmarks"}}, "overall": mean over all benchmarks,
       "overall_by_category": mean of the category means}.
    """
    by_cat: dict[str, list[str]] = {}
    for name in per_benchmark:
        by_cat.setdefault(categories[name], []).append(name)
    cats = {
        c: {"accuracy": round(statistics.fmean(per_benchmark[n]["score"] for n in names), 4), "benchmarks": names}
        for c, names in by_cat.items()
    }
    scores = [m["score"] for m in per_benchmark.values()]
    return {
        "categories": cats,
        "overall": round(statistics.fmean(scores), 4) if scores else math.nan,
        "overall_by_category": round(statistics.fmean(c["accuracy"] for c in cats.values()), 4) if cats else math.nan,
    }


__all__ = ["QuestionResult", "Response", "benchmark_metrics", "majority_vote", "summarize"]
