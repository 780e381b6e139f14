"""Benchmark evaluation: the registry of the paper's benchmarks, the eval loop, metrics and reports.

The training loop's entry point is `evaluate_model(model, questions, params, ...) -> EvalResult`.
"""

from octomed_jax.evaluation.benchmarks import BENCHMARKS, CATEGORIES, Benchmark, select
from octomed_jax.evaluation.metrics import QuestionResult, Response, benchmark_metrics, majority_vote, summarize
from octomed_jax.evaluation.protocol import PAPER, QUICK, Protocol
from octomed_jax.evaluation.report import markdown_table, plot_response_lengths, table_json, write_json
from octomed_jax.evaluation.run import EvalResult, evaluate_model, generate_responses

__all__ = [
    "BENCHMARKS",
    "CATEGORIES",
    "PAPER",
    "QUICK",
    "Benchmark",
    "EvalResult",
    "QuestionResult",
    "Response",
    "benchmark_metrics",
    "evaluate_model",
    "generate_responses",
    "majority_vote",
    "markdown_table",
    "Protocol",
    "plot_response_lengths",
    "select",
    "summarize",
    "table_json",
    "write_json",
]
