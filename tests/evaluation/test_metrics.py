"""Scoring on hand-made predictions: majority vote, seed averaging, per-category means, reports."""

import math

import pytest

from octomed_jax.evaluation import (
    QuestionResult,
    Response,
    benchmark_metrics,
    majority_vote,
    markdown_table,
    plot_response_lengths,
    summarize,
)


def r(answer, tokens=10, finish="stop"):
    return Response(text=f"The answer is {answer}", num_tokens=tokens, answer=answer, finish_reason=finish)


def test_majority_vote():
    assert majority_vote(["A", "B", "B", None, None, None]) == "B"  # unparseable answers do not vote
    assert majority_vote(["C", "A", "A", "C"]) == "C"  # a tie goes to the answer reached first
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def test_seed_average_and_spread():
    # 2 questions x 3 seeds x 1 sample. Seed accuracies: 100, 50, 0 -> mean 50, sample std 50.
    results = [
        QuestionResult("q1", "A", [[r("A")], [r("A")], [r("B")]]),
        QuestionResult("q2", "C", [[r("C", 30)], [r(None, 50, "length")], [r("D")]]),
    ]
    m = benchmark_metrics(results, majority_k=[3])
    assert m["accuracy_per_seed"] == [100.0, 50.0, 0.0]
    assert m["accuracy"] == 50.0
    assert m["accuracy_std"] == pytest.approx(50.0)
    assert m["unparseable"] == 1 and m["unparseable_rate"] == pytest.approx(100 / 6, abs=1e-3)
    assert m["truncated"] == 1
    assert m["mean_response_tokens"] == pytest.approx((10 + 10 + 10 + 30 + 50 + 10) / 6)
    # Majority over 3: q1 votes A,A,B -> A (right); q2 votes C,None,D -> C (first of a tie; right).
    assert m["majority_at_k"] == {"3": 100.0}


def test_samples_within_a_seed_and_majority_at_k():
    # One seed, 4 samples per question: accuracy counts every sample; majority@1 is the first sample only.
    results = [
        QuestionResult("q1", "B", [[r("A"), r("B"), r("B"), r("B")]]),
        QuestionResult("q2", "A", [[r("A"), r("C"), r("C"), r(None)]]),
    ]
    m = benchmark_metrics(results, majority_k=[1, 4])
    assert m["accuracy"] == pytest.approx(100 * 4 / 8)
    assert m["accuracy_std"] == 0.0
    assert m["majority_at_k"] == {"1": 50.0, "4": 50.0}  # q1: A then B wins; q2: A then C wins


def test_per_category_and_overall_means():
    per = {
        "medqa": {"score": 80.0},
        "headqa": {"score": 60.0},
        "pmc_vqa": {"score": 40.0},
        "bcss": {"score": 10.0},
        "aptos": {"score": 30.0},
    }
    cats = {
        "medqa": "text",
        "headqa": "text",
        "pmc_vqa": "mm_reasoning",
        "bcss": "mm_classification",
        "aptos": "mm_classification",
    }
    s = summarize(per, cats)
    assert s["categories"]["text"]["accuracy"] == 70.0
    assert s["categories"]["mm_reasoning"]["accuracy"] == 40.0
    assert s["categories"]["mm_classification"]["accuracy"] == 20.0
    assert s["overall"] == pytest.approx(44.0)  # mean over the five benchmarks
    assert s["overall_by_category"] == pytest.approx((70 + 40 + 20) / 3)


def test_empty_benchmark_is_nan_not_an_error():
    assert math.isnan(benchmark_metrics([])["accuracy"])


def test_table_and_plot(tmp_path):
    results = {
        "medqa": [QuestionResult("q", "A", [[r("A")], [r("B")]])],
        "pmc_vqa": [QuestionResult("q", "A", [[r("A")], [r("A")]])],
    }
    per = {k: benchmark_metrics(v) for k, v in results.items()}
    cats = {"medqa": "text", "pmc_vqa": "mm_reasoning"}
    metrics = {"benchmarks": per, "categories": cats, "summary": summarize(per, cats)}
    table = markdown_table({"tiny": metrics})
    header = [line for line in table.splitlines() if line.startswith("| Model")][0]
    assert header.split(" | ")[1:4] == ["MedQA", "Text avg", "PMC-VQA"]
    assert "| tiny | 50.00 ± 70.71 | **50.00** | 100.00 ± 0.00 | **100.00** | **75.00** |" in table
    plot_response_lengths(metrics, str(tmp_path / "len.png"))
    assert (tmp_path / "len.png").read_bytes()[:4] == b"\x89PNG"
