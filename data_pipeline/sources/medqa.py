"""MedQA (USMLE) jsonl: `question`, `options` {"A": ..., "E": ...}, `answer` (text), `answer_idx` ("C")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline.records import BadRecordError, Question
from data_pipeline.sources.base import (
    Item,
    answer_letter,
    find_files,
    iter_rows,
    options_from_mapping,
    run_rows,
    text_field,
)

NAME = "medqa"


def read_medqa(path: str | Path, *, split: str = "train", check_answer_text: bool = True) -> Iterator[Item]:
    """Reads MedQA questions (the 5-option `US/*.jsonl` or the `4_options` files).

    Args:
      path: a jsonl file, or a directory holding `train/dev/test.jsonl` (searched recursively).
      split: which split to read when `path` is a directory; also recorded on each question.
      check_answer_text: reject a row whose `answer` text disagrees with `options[answer_idx]`
        (`answer_mismatch`), which catches shifted or mislabelled rows.

    Yields:
      Question (category "text") or Rejected; ids are `{split}-{row index}` (MedQA has no id field).
    """
    files = find_files(path, split, (".jsonl", ".json"))

    def build(index: int, row: dict[str, Any]) -> Question:
        options = options_from_mapping(row["options"])
        letter = answer_letter(row.get("answer_idx"))
        answer_text = row.get("answer")
        if check_answer_text and answer_text is not None and letter in options:
            if str(answer_text).strip().lower() != options[letter].lower():
                raise BadRecordError(
                    "answer_mismatch", f"answer {answer_text!r} != option {letter} {options[letter]!r}"
                )
        meta = {"meta_info": str(row["meta_info"])} if row.get("meta_info") else {}
        return Question(
            id=f"{split}-{index}",
            source=NAME,
            category="text",
            question=text_field(row, "question"),
            options=options,
            answer=letter,
            split=split,
            metadata=meta,
        )

    return run_rows(NAME, iter_rows(files), build)
