"""MedXpertQA jsonl (Text and MM subsets): `id`, `question`, `options` {"A": ...}, `label`, `images` (file
names under `images/`), `medical_task`, `body_system`, `question_type`.

The released `question` text ends with an "Answer Choices: (A) ... (B) ..." block that repeats the options;
it is cut off so that the options are shown once, by `formats.render_question`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from data_pipeline.records import Question
from data_pipeline.sources.base import (
    DEFAULT_IMAGES,
    ImageSettings,
    Item,
    answer_letter,
    as_list,
    find_files,
    iter_rows,
    load_images,
    options_from_mapping,
    run_rows,
    text_field,
)

_CHOICES_BLOCK = re.compile(r"\s*Answer\s+Choices\s*:\s*\(?A\).*\Z", re.IGNORECASE | re.DOTALL)
_SUBSET_DIRS = {"text": "Text", "mm": "MM"}


def strip_answer_choices(question: str) -> str:
    """The stem without MedXpertQA's trailing "Answer Choices: (A) ..." block."""
    return _CHOICES_BLOCK.sub("", question).strip()


def read_medxpertqa(
    path: str | Path,
    *,
    subset: Literal["text", "mm"] = "text",
    split: str = "test",
    image_root: str | Path | None = None,
    image_dir: str = "images",
    images: ImageSettings = DEFAULT_IMAGES,
) -> Iterator[Item]:
    """Reads MedXpertQA questions.

    Args:
      path: a jsonl file, or the dataset directory (its `Text/` or `MM/` subdirectory is used for `subset`).
      subset: "text" (category "text") or "mm" (category "mm_reasoning").
      split: "dev" or "test" (the release has no train split).
      image_root: the directory holding `image_dir` (default: the dataset directory; for a file in `MM/`,
        its parent's parent when that is where `images/` is).
      image_dir: subdirectory of `image_root` with the image files.
      images: image checks.

    Yields:
      Question or Rejected.
    """
    p = Path(path)
    search = p / _SUBSET_DIRS[subset] if p.is_dir() and (p / _SUBSET_DIRS[subset]).is_dir() else p
    files = find_files(search, split, (".jsonl", ".json"))
    if image_root is not None:
        root = Path(image_root)
    else:
        root = p if p.is_dir() else p.parent
        if not (root / image_dir).is_dir() and (root.parent / image_dir).is_dir():
            root = root.parent
    name = f"medxpertqa_{subset}"

    def build(index: int, row: dict[str, Any]) -> Question:
        refs = load_images(root, as_list(row.get("images")), images, subdir=image_dir)
        meta = {k: str(row[k]) for k in ("medical_task", "body_system", "question_type") if row.get(k)}
        return Question(
            id=str(row.get("id") or f"{split}-{index}"),
            source=name,
            category="mm_reasoning" if subset == "mm" else "text",
            question=strip_answer_choices(text_field(row, "question")),
            options=options_from_mapping(row["options"]),
            answer=answer_letter(row.get("label")),
            images=refs,
            split=split,
            metadata=meta,
        )

    return run_rows(name, iter_rows(files), build)
