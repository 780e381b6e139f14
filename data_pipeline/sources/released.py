"""OctoMed's released trace datasets (e.g. OctoMed/Messidor2) from local Parquet or JSONL.

Fields: `question`, `options` (list like "A: No DR", or a dict), `answer` ("A: No DR"), `responses`
(teacher traces, each starting with `<think>`), and images as a Hugging Face image struct, bytes or a
path (`image` / `images`). Each row becomes a `ReleasedTraces`: the question plus its responses, so the
pipeline can run rejection sampling and formatting without calling a teacher.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline.records import BadRecordError, Question
from data_pipeline.sources.base import (
    DEFAULT_IMAGES,
    ImageSettings,
    Item,
    ReleasedTraces,
    answer_from_value,
    as_list,
    find_files,
    image_from_value,
    options_from_any,
    root_of,
    run_rows,
    text_field,
)
from data_pipeline.sources.layout import checked_rows, unread_files

COLUMNS = ("question", "answer", "responses")  # options come as `options`, `choices` or per-letter fields


def read_released_traces(
    path: str | Path,
    *,
    name: str = "octomed_released",
    category: str | None = None,
    split: str = "train",
    teacher: str = "octomed-released",
    image_root: str | Path | None = None,
    images: ImageSettings = DEFAULT_IMAGES,
) -> Iterator[Item]:
    """Reads a released trace dataset.

    Args:
      path: a parquet/jsonl file or a directory of split files (`train-0000x-of-0000n.parquet`).
      name: the source name to record (e.g. "octomed_messidor2").
      category: the category to record; default "mm_reasoning" for questions with images, else "text"
        (pass "mm_classification" for the classification sets).
      split: the split to read and record.
      teacher: recorded on the ReleasedTraces.
      image_root: where image paths are resolved (default: the file's directory).
      images: image checks.

    Yields:
      ReleasedTraces or Rejected (`no_responses` when a row has none), then (for a folder) a
      Skipped("not_read") per other file (other splits, README.md).

    Raises:
      LayoutError: a file lacks a released-trace column (raised when that file is reached).
    """
    files = find_files(path, split, (".parquet", ".jsonl", ".json"), single_file_ok=True)
    root = root_of(files, path, image_root)

    def build(index: int, row: dict[str, Any]) -> ReleasedTraces:
        options = options_from_any(row)
        responses = tuple(str(r) for r in as_list(row.get("responses")) if r is not None and str(r).strip())
        if not responses:
            raise BadRecordError("no_responses", f"row {index} has no responses")
        values = as_list(row.get("images", row.get("image")))
        refs = tuple(image_from_value(v, root, images) for v in values)
        question = Question(
            id=str(row.get("id", f"{split}-{index}")),
            source=name,
            category=category or ("mm_reasoning" if refs else "text"),
            question=text_field(row, "question"),
            options=options,
            answer=answer_from_value(row.get("answer"), options),
            images=refs,
            split=split,
            metadata={},
        )
        return ReleasedTraces(question=question, responses=responses, teacher=teacher)

    items = run_rows(name, checked_rows(files, COLUMNS), build)
    p = Path(path)
    return itertools.chain(items, unread_files(name, p, files, recursive=True)) if p.is_dir() else items
