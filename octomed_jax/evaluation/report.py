"""Evaluation reports: the JSON of metrics, a Markdown table laid out like the paper's Table 2, and a PNG of
mean response length per benchmark (the paper's task-aware thinking figure)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from octomed_jax.evaluation.benchmarks import BENCHMARKS, CATEGORIES, CATEGORY_TITLES
from octomed_jax.evaluation.metrics import QuestionResult, summarize
from octomed_jax.evaluation.protocol import PAPER, PAPER_TABLE

CATEGORY_COLORS = {"text": "#4C72B0", "mm_reasoning": "#DD8452", "mm_classification": "#55A868"}
PAPER_RUN = "OctoMed-7B (paper)"


def write_json(obj: Any, path: str) -> None:
    """Writes `obj` as indented JSON atomically (a crash never leaves half a file behind)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, allow_nan=True)
        f.write("\n")
    os.replace(tmp, path)


def write_responses(results: Sequence[QuestionResult], path: str) -> None:
    """Writes one JSON line per question (`id`, `answer`, `responses[seed][sample]` as dicts), atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        for r in results:
            record = {"id": r.question_id, "answer": r.answer,
                      "responses": [[dataclasses.asdict(x) for x in seed] for seed in r.responses]}
            f.write(json.dumps(record) + "\n")
    os.replace(tmp, path)


def _columns(metrics: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """(category, benchmark names) in the paper's Table 2 order; benchmarks outside it go last in their category."""
    categories = metrics["categories"]
    present = list(metrics["benchmarks"])
    out = []
    for c in CATEGORIES:
        names = [n for n in PAPER_TABLE if n in present and categories[n] == c]
        names += [n for n in present if n not in PAPER_TABLE and categories[n] == c]
        if names:
            out.append((c, names))
    return out


def _title(name: str) -> str:
    """The paper's name for a benchmark of its Table 2, else the registry's title."""
    if name in PAPER_TABLE:
        return PAPER_TABLE[name].title
    return BENCHMARKS[name].title if name in BENCHMARKS else name


def _paper_metrics(groups: list[tuple[str, list[str]]]) -> dict[str, Any]:
    """The paper's OctoMed-7B scores over the same benchmarks, as metrics (category means computed alike)."""
    names = [n for _, ns in groups for n in ns if n in PAPER_TABLE]
    per = {n: {"score": PAPER_TABLE[n].score, "score_std": 0.0, "num_seeds": 1, "majority": PAPER.majority.get(n)}
           for n in names}
    categories = {n: PAPER_TABLE[n].category for n in per}
    return {"benchmarks": per, "categories": categories, "summary": summarize(per, categories)}


def table_json(runs: Mapping[str, Mapping[str, Any]], *, paper: bool = False) -> dict[str, Any]:
    """The table as data, laid out like the paper's Table 2: column groups by category, one row per run.

    Args:
      runs: run name (e.g. "OctoMed-JAX step 2000") -> the `metrics` of an `EvalResult`.
      paper: add a row of the paper's OctoMed-7B scores (`protocol.PAPER_TABLE`) on the same benchmarks.

    Returns:
      {"columns": [{"category", "title", "benchmarks": [{"name", "title", "paper_count"}]}],
       "rows": [{"run", "benchmarks": {name: {"score", "std", "num_seeds", "majority", "images_capped"} or None},
                 "categories": {category: mean or None}, "overall"}]}; `paper_count` is how many benchmarks
      the paper averages in that category.
    """
    groups = _columns(next(iter(runs.values())))
    if paper:
        runs = {**runs, PAPER_RUN: _paper_metrics(groups)}
    columns = [
        {"category": c, "title": CATEGORY_TITLES[c], "benchmarks": [{"name": n, "title": _title(n)} for n in names],
         "paper_count": sum(p.category == c for p in PAPER_TABLE.values())}
        for c, names in groups
    ]
    rows = []
    for run, metrics in runs.items():
        cells = {}
        for _, names in groups:
            for n in names:
                m = metrics["benchmarks"].get(n)
                cells[n] = m and {"score": m["score"], "std": m["score_std"], "num_seeds": m["num_seeds"],
                                  "majority": m["majority"], "images_capped": m.get("images_capped", 0)}
        cats = metrics["summary"]["categories"]
        rows.append({"run": run, "benchmarks": cells,
                     "categories": {c: cats[c]["accuracy"] if c in cats else None for c, _ in groups},
                     "overall": metrics["summary"]["overall"]})
    return {"columns": columns, "rows": rows}


def _cell(m: Mapping[str, Any] | None) -> str:
    if m is None or m["score"] is None or (isinstance(m["score"], float) and math.isnan(m["score"])):
        return "–"
    text = f"{m['score']:.2f} ± {m['std']:.2f}" if m["num_seeds"] > 1 else f"{m['score']:.2f}"
    return text + ("†" if m["majority"] else "")


def markdown_table(runs: Mapping[str, Mapping[str, Any]], *, paper: bool = False) -> str:
    """A Markdown table laid out like the paper's Table 2 (`table_json`), with notes on how it was scored.

    Args:
      runs: run name (e.g. "OctoMed-JAX step 2000") -> the `metrics` of an `EvalResult`.
      paper: add a row of the paper's OctoMed-7B scores on the same benchmarks.

    Returns:
      A line naming the column groups, the table, then notes: the benchmarks scored by majority vote (†),
      categories with fewer benchmarks than the paper's, questions cut to the image cap. Cells are the
      reported score (%), "mean ± std" over seeds when there are several; category means in bold.
    """
    table = table_json(runs, paper=paper)
    columns, rows = table["columns"], table["rows"]
    header = ["Model"]
    for col in columns:
        header += [b["title"] for b in col["benchmarks"]] + [f"{col['title']} avg"]
    header.append("Overall")
    lines = [
        "Columns: " + "; ".join(f"{col['title']} = {', '.join(b['title'] for b in col['benchmarks'])}"
                                for col in columns),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|",
    ]
    for row in rows:
        cells = [row["run"]]
        for col in columns:
            cells += [_cell(row["benchmarks"][b["name"]]) for b in col["benchmarks"]]
            mean = row["categories"][col["category"]]
            cells.append("–" if mean is None else f"**{mean:.2f}**")
        cells.append(f"**{row['overall']:.2f}**")
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    voted = {(b, m["majority"]) for row in rows for b, m in row["benchmarks"].items() if m and m["majority"]}
    for name, k in sorted(voted):
        notes.append(f"† {_title(name)}: majority vote of {k} samples per question and seed, as the paper reports it.")
    partial = [f"{col['title']} {len(col['benchmarks'])} of {col['paper_count']}" for col in columns
               if len(col["benchmarks"]) < col["paper_count"]]
    if partial:
        notes.append("Category means over the benchmarks present (the paper's over all): " + ", ".join(partial) + ".")
    for row in rows:
        capped = [f"{_title(b)} {m['images_capped']}" for b, m in row["benchmarks"].items() if m and m["images_capped"]]
        if capped:
            notes.append(f"{row['run']}: questions cut to their first images (the image cap): {', '.join(capped)}.")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def plot_response_lengths(metrics: Mapping[str, Any], path: str, *, title: str = "Mean response length") -> None:
    """Bar chart of mean response tokens per benchmark, coloured by category, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    names = [n for _, ns in _columns(metrics) for n in ns]
    values = [metrics["benchmarks"][n]["mean_response_tokens"] for n in names]
    colors = [CATEGORY_COLORS[metrics["categories"][n]] for n in names]
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


__all__ = ["PAPER_RUN", "markdown_table", "plot_response_lengths", "table_json", "write_json"]
