"""NEJM Image Challenge (jsonl or json): a question, options A-E, the answer letter and an image file.

There is no single official dump; community copies differ in field names, so the usual spellings are
accepted: `options` (dict or list) or fields `A`..`E` / `option_A`..; `answer` / `label` / `correct_answer`
(letter or option text); `image` / `image_path` / `images`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline.records import Question
from data_pipeline.sources.base import (
    DEFAULT_IMAGES,
    ImageSettings,
    Item,
    answer_from_value,
    as_list,
    find_files,
    image_from_value,
    iter_rows,
    options_from_any,
    root_of,
    run_rows,
    text_field,
)

NAME = "nejm"


def read_nejm(
    path: str | Path,
    *,
    split: str = "test",
    image_root: str | Path | None = None,
    image_dir: str | None = None,
    images: ImageSettings = DEFAULT_IMAGES,
) -> Iterator[Item]:
    """Reads NEJM Image Challenge questions.

    Args:
      path: a jsonl/json file, or a directory with split files (or a single file).
      split: the split to record (the challenge is a benchmark: "test").
      image_root: where image paths are resolved (default: the file's directory).
      image_dir: subdirectory of `image_root` holding the images.
      images: image checks.

    Yields:
      Question (category "mm_reasoning") or Rejected.
    """
    files = find_files(path, split, (".jsonl", ".json"), single_file_ok=True)
    root = root_of(files, path, image_root)

    def build(index: int, row: dict[str, Any]) -> Question:
        options = options_from_any(row)
        answer = answer_from_value(row.get("answer", row.get("label", row.get("correct_answer"))), options)
        values = as_list(row.get("images", row.get("image", row.get("image_path"))))
        refs = tuple(image_from_value(v, root, images, subdir=image_dir) for v in values)
        return Question(
            id=str(row.get("id", row.get("date", f"{split}-{index}"))),
            source=NAME,
            category="mm_reasoning",
            question=text_field(row, "question"),
            options=options,
            answer=answer,
            images=refs,
            split=split,
            metadata={},
        )

    return run_rows(NAME, iter_rows(files), build)
