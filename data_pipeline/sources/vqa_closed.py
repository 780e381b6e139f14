"""VQA-RAD and SLAKE json: closed yes/no questions become two-option multiple choice (A: yes, B: no).

Fields: `image_name` (VQA-RAD) or `img_name` (SLAKE), `question`, `answer`, `answer_type` ("OPEN" /
"CLOSED"), `q_lang` (SLAKE: "en" / "zh"). Open questions and other languages are left out by design;
a closed question whose answer is not yes/no (e.g. "Left") is counted as `closed_not_yes_no`.
VQA-RAD ships all splits in one file; its `phrase_type` ("test_freeform", "freeform", ...) gives the split.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline.records import BadRecordError, Question
from data_pipeline.sources.base import (
    DEFAULT_IMAGES,
    Excluded,
    ImageSettings,
    Item,
    find_files,
    image_from_value,
    iter_rows,
    root_of,
    run_rows,
    text_field,
)

YES_NO_OPTIONS = {"A": "yes", "B": "no"}
_META_FIELDS = ("image_organ", "question_type", "location", "modality", "content_type", "q_lang")


def _read_closed(
    name: str,
    path: str | Path,
    *,
    split: str,
    image_root: str | Path | None,
    image_dir: str | None,
    languages: tuple[str, ...],
    images: ImageSettings,
) -> Iterator[Item]:
    files = find_files(path, split, (".json", ".jsonl", ".parquet"), single_file_ok=True)
    root = root_of(files, path, image_root)

    def build(index: int, row: dict[str, Any]) -> Question:
        if str(row.get("answer_type", "")).strip().upper() != "CLOSED":
            raise Excluded("open_question", f"row {index}: answer_type {row.get('answer_type')!r}")
        if "q_lang" in row and str(row["q_lang"]).lower() not in languages:
            raise Excluded("other_language", f"row {index}: q_lang {row['q_lang']!r} not in {sorted(languages)}")
        phrase = str(row.get("phrase_type", ""))
        if phrase and ("test" if phrase.startswith("test") else "train") != split:
            raise Excluded("other_split", f"row {index}: phrase_type {phrase!r}")  # VQA-RAD: one file, both splits
        answer = text_field(row, "answer").lower().rstrip(".")
        if answer not in YES_NO_OPTIONS.values():
            raise BadRecordError("closed_not_yes_no", f"closed answer {answer!r} is not yes/no")
        image_value = row.get("image") or text_field(row, "image_name", "img_name")
        meta = {k: str(row[k]) for k in _META_FIELDS if row.get(k) not in (None, "")}
        return Question(
            id=str(row.get("qid", f"{split}-{index}")),
            source=name,
            category="mm_reasoning",
            question=text_field(row, "question"),
            options=dict(YES_NO_OPTIONS),
            answer="A" if answer == "yes" else "B",
            images=(image_from_value(image_value, root, images, subdir=image_dir),),
            split=split,
            metadata=meta,
        )

    return run_rows(name, iter_rows(files), build)


def read_vqa_rad(
    path: str | Path,
    *,
    split: str = "train",
    image_root: str | Path | None = None,
    image_dir: str | None = "VQA_RAD Image Folder",
    images: ImageSettings = DEFAULT_IMAGES,
) -> Iterator[Item]:
    """Reads VQA-RAD closed yes/no questions.

    Args:
      path: the json file (`VQA_RAD Dataset Public.json`) or its directory.
      split: "train" or "test" (from `phrase_type`; rows without it are kept for any split).
      image_root: directory holding `image_dir` (default: the json's directory).
      image_dir: subdirectory with the images (None: names are relative to `image_root`).
      images: image checks.

    Yields:
      Question (category "mm_reasoning") or Rejected.
    """
    return _read_closed(
        "vqa_rad",
        path,
        split=split,
        image_root=image_root,
        image_dir=image_dir,
        languages=("en",),
        images=images,
    )


def read_slake(
    path: str | Path,
    *,
    split: str = "train",
    image_root: str | Path | None = None,
    image_dir: str | None = "imgs",
    languages: tuple[str, ...] = ("en",),
    images: ImageSettings = DEFAULT_IMAGES,
) -> Iterator[Item]:
    """Reads SLAKE closed yes/no questions (English only by default).

    Args:
      path: `train.json` / `validate.json` / `test.json` or their directory.
      split: the split to read and record.
      image_root: directory holding `image_dir` (default: the json's directory).
      image_dir: subdirectory with the image folders (`xmlab102/source.jpg`).
      languages: `q_lang` values to keep.
      images: image checks.

    Yields:
      Question (category "mm_reasoning") or Rejected.
    """
    return _read_closed(
        "slake",
        path,
        split=split,
        image_root=image_root,
        image_dir=image_dir,
        languages=languages,
        images=images,
    )
