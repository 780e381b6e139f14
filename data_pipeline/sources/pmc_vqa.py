"""PMC-VQA csv: `Figure_path`, `Question`, `Answer`, `Choice A`..`Choice D`, `Answer_label`.

The choices carry their own letter ("A:text", " B:text", sometimes "A: text"); it is stripped so options
are plain texts. Images are file names under `images/` (`image_dir`).
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
    answer_letter,
    find_files,
    iter_rows,
    load_images,
    options_from_list,
    root_of,
    run_rows,
    text_field,
)

NAME = "pmc_vqa"


def read_pmc_vqa(
    path: str | Path,
    *,
    split: str = "train",
    image_root: str | Path | None = None,
    image_dir: str | None = "images",
    images: ImageSettings = DEFAULT_IMAGES,
) -> Iterator[Item]:
    """Reads PMC-VQA multiple-choice questions.

    Args:
      path: a csv file (`train.csv`, `test.csv`, `test_clean.csv`) or a directory holding them.
      split: the split to read and record.
      image_root: the directory holding `image_dir` (default: the csv's directory).
      image_dir: subdirectory with the figures (None: `Figure_path` is relative to `image_root`).
      images: image checks.

    Yields:
      Question (category "mm_reasoning") or Rejected.
    """
    files = find_files(path, split, (".csv",))
    root = root_of(files, path, image_root)

    def build(index: int, row: dict[str, Any]) -> Question:
        choices = [row[f"Choice {letter}"] for letter in "ABCD" if row.get(f"Choice {letter}") is not None]
        figure = text_field(row, "Figure_path")
        return Question(
            id=f"{split}-{index}-{Path(figure).stem}",
            source=NAME,
            category="mm_reasoning",
            question=text_field(row, "Question"),
            options=options_from_list(choices, strip_prefixes=True),
            answer=answer_letter(row.get("Answer_label")),
            images=load_images(root, [figure], images, subdir=image_dir),
            split=split,
            metadata={},
        )

    return run_rows(NAME, iter_rows(files), build)
