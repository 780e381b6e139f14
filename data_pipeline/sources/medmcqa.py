"""MedMCQA jsonl: `id`, `question`, `opa`..`opd`, `cop`, `choice_type`, `exp`, `subject_name`, `topic_name`.

`cop` is 1-based (1..4) in the original release and 0-based (0..3) in the Hugging Face copy; the base is
a parameter so that neither is silently shifted by one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline.records import BadRecordError, Question
from data_pipeline.sources.base import (
    Excluded,
    Item,
    find_files,
    iter_rows,
    letter_at,
    options_from_list,
    run_rows,
    text_field,
)

NAME = "medmcqa"
_OPTION_FIELDS = ("opa", "opb", "opc", "opd")


def read_medmcqa(
    path: str | Path, *, split: str = "train", cop_base: int = 1, single_choice_only: bool = False
) -> Iterator[Item]:
    """Reads MedMCQA questions.

    Args:
      path: a jsonl (or json / parquet) file, or a directory with `train/dev/test` files.
      split: the split to read and record.
      cop_base: 1 for the original release (default), 0 for the Hugging Face copy.
      single_choice_only: leave out `choice_type == "multi"` rows (their single key is sometimes debatable).

    Yields:
      Question (category "text") or Rejected. The unlabelled test split (cop missing or -1) gives
      `missing_answer` rejections.
    """
    files = find_files(path, split, (".jsonl", ".json", ".parquet"))

    def build(index: int, row: dict[str, Any]) -> Question:
        if single_choice_only and row.get("choice_type") == "multi":
            raise Excluded("multi_choice", f"row {index}: a multiple-answer question")
        cop = row.get("cop")
        if cop is None or cop == "" or int(cop) < 0:
            raise BadRecordError("missing_answer", f"row {index} has no correct option (cop={cop!r})")
        options = options_from_list([row[f] for f in _OPTION_FIELDS])
        meta = {k: str(row[k]) for k in ("subject_name", "topic_name", "choice_type") if row.get(k)}
        return Question(
            id=str(row.get("id") or f"{split}-{index}"),
            source=NAME,
            category="text",
            question=text_field(row, "question"),
            options=options,
            answer=letter_at(int(cop), base=cop_base),
            split=split,
            metadata=meta,
        )

    return run_rows(NAME, iter_rows(files), build)
