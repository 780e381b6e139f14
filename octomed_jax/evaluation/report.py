"""Evaluation reports: the JSON of metrics, a Markdown table laid out like the paper's Table 2, and a PNG of
mean response length per benchmark (the paper's task-aware thinking figure)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from octomed_jax.evaluation.benchmarks import BENCHMARKS, CATEGORIES, CATEGORY_TITLES

CATEGORY_COLORS = {"text": "#4C72B0", "mm_reasoning": "#DD8452", "mm_classification": "#55A868"}


def write_json(obj: Any, path: str) -> None:
    """Writes `obj` as indented JSON atomically (a crash never leaves half a file behind)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, allow_nan=True)
        f.write("\n")
    os.replace(tmp, path)


def _columns(metrics: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """(category, benchmark names) in the paper's order; benchmarks outside the registry go last."""
    categories = metrics.get("categories", {})
    present = list(metrics["benchmarks"])
    out = []
    for c in CATEGORIES:
        names = [n for n in BENCHMARKS if n in present and BENCHMARKS[n].category == c]
        names += [n for n in present if n not in BENCHMARKS and categories.get(n) == c]
        if names:
            out.append((c, names))
    return out


def _cell(m: Mapping[str, Any]) -> str:
    acc = m["accuracy"]
    if acc is None or (isinstance(acc, float) and math.isnan(acc)):
        return "–"
    return f"{acc:.2f} ± {m['accuracy_std']:.2f}" if m.get("num_seeds", 1) > 1 else f"{acc:.2f}"


def _title(name: str) -> str:
    return BENCHMARKS[name].title if name in BENCHMARKS else name


def markdown_table(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table, one row per run, columns grouped by category with each category's mean.

    Args:
      runs: run name (e.g. "OctoMed-JAX step 2000") -> the `metrics` of an `EvalResult`.

    Returns:
      The table, preceded by a line naming the column groups. Cells are accuracy (%), "mean ± std"
      over seeds when there are several.
    """
    first = next(iter(runs.values()))
    groups = _columns(first)
    header = ["Model"]
    for c, names in groups:
        header += [_title(n) for n in names] + [f"{CATEGORY_TITLES[c]} avg"]
    header.append("Overall")
    lines = [
        "Columns: " + "; ".join(f"{CATEGORY_TITLES[c]} = {', '.join(_title(n) for n in names)}" for c, names in groups),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|",
    ]
    for run, metrics in runs.items():
        row = [run]
        for c, names in groups:
            row += [_cell(metrics["benchmarks"][n]) if n in metrics["benchmarks"] else "–" for n in names]
            cat = metrics["summary"]["categories"].get(c)
            row.append(f"**{cat['accuracy']:.2f}**" if cat else "–")
        row.append(f"**{metrics['summary']['overall']:.2f}**")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_response_lengths(metrics: Mapping[str, Any], path: str, *, title: str = "Mean response length") -> None:
    """Bar chart of mean response tokens per benchmark, coloured by category, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    names = [n for _, ns in _columns(metrics) for n in ns]
    cats = metrics.get("categories", {})
    values = [metrics["benchmarks"][n]["mean_response_tokens"] for n in names]
    colors = [
        CATEGORY_COLORS.get(BENCHMARKS[n].category if n in BENCHMARKS else cats.get(n, ""), "#888") for n in names
    ]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 2), 4))
    ax.bar(range(len(names)), values, color=colors)
    ax.set_xticks(range(len(names)), [_title(n) for n in names], rotation=45, ha="right")
    ax.set_ylabel("tokens")
    ax.set_title(title)
    handles = [plt.Rectangle((0, 0), 1, 1, color=CATEGORY_COLORS[c]) for c in CATEGORIES]
    ax.legend(handles, [CATEGORY_TITLES[c] for c in CATEGORIES], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["markdown_table", "plot_response_lengths", "write_json"]
