"""The benchmark registry, re-exported: it lives in `data_pipeline.benchmarks` (pure data), which the build's
decontamination reads too, so evaluation and decontamination cover the same sets."""

from data_pipeline.benchmarks import (
    BENCHMARKS,
    CATEGORIES,
    CATEGORY_TITLES,
    CLASSIFICATION,
    MM_REASONING,
    TEXT,
    Benchmark,
    select,
)

__all__ = [
    "BENCHMARKS",
    "CATEGORIES",
    "CATEGORY_TITLES",
    "CLASSIFICATION",
    "MM_REASONING",
    "TEXT",
    "Benchmark",
    "select",
]
