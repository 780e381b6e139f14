"""Benchmark evaluation: the registry of the paper's benchmarks, the eval loop, metrics and reports.

The training loop's entry point is `evaluate_model(model, questions, params, ...) -> EvalResult`.
"""

from octomed_jax.evaluation.benchmarks import BENCHMARKS, CATEGORIES, Benchmark, select
from octomed_jax.evaluation.metrics import QuestionResult, Response, benchmark_metrics, majority_vote, summarize
from octomed_jax.evaluation.report import markdown_table, plot_response_lengths, write_json
from octomed_jax.evaluation.run import PAPER_PARAMS, PAPER_SEEDS, EvalResult, evaluate_model, generate_responses

__all__ = [
    "BENCHMARKS",
    "CATEGORIES",
    "PAPER_PARAMS",
    "PAPER_SEEDS",
    "Benchmark",
    "EvalResult",
    "QuestionResult",
    "Response",
    "benchmark_metrics",
    "evaluate_model",
    "generate_responses",
    "majority_vote",
    "markdown_table",
    "plot_response_lengths",
    "select",
    "summarize",
    "write_json",
]
