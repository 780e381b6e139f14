"""MMLU-Pro: `question_id`, `question`, `options` (list of up to 10), `answer` (letter), `answer_index`,
`category`. Only the health category is medical; other categories are left out, not rejected."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from data_pipeline.records import Question
from data_pipeline.sources.base import (
    Excluded,
    Item,
    answer_letter,
    find_files,
    iter_rows,
    letter_at,
    options_from_list,
    run_rows,
    text_field,
)

NAME = "mmlu_pro"


def read_mmlu_pro(path: str | Path, *, split: str = "test", categories: Sequence[str] = ("health",)) -> Iterator[Item]:
    """Reads MMLU-Pro questions of the given categories.

    Args:
      path: a parquet / jsonl / json file, or a directory with split files (`test-*.parquet`).
      split: the split to read ("test" or "validation").
      categories: categories to keep (case-insensitive).

    Yields:
      Question (category "text") or Rejected. `answer` is preferred; `answer_index` is used when the letter
      is absent.
    """
    files = find_files(path, split, (".parquet", ".jsonl", ".json"))
    wanted = {c.lower() for c in categories}

    def build(index: int, row: dict[str, Any]) -> Question:
        category = str(row.get("category", "")).lower()
        if category not in wanted:
            raise Excluded("other_category", f"row {index}: category {category!r}, not one of {sorted(wanted)}")
        # Some copies pad the options with "N/A"; they are not choices.
        texts = [t for t in row["options"] if str(t).strip() not in ("", "N/A")]
        if row.get("answer") not in (None, ""):
            letter = answer_letter(row["answer"])
        else:
            letter = letter_at(int(row["answer_index"]))
        return Question(
            id=str(row.get("question_id", f"{split}-{index}")),
            source=NAME,
            category="text",
            question=text_field(row, "question"),
            options=options_from_list(texts),
            answer=letter,
            split=split,
            metadata={"category": category, **({"src": str(row["src"])} if row.get("src") else {})},
        )

    return run_rows(NAME, iter_rows(files), build)
