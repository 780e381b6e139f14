"""PMC-VQA csv, as released on Hugging Face (xmcmic/PMC-VQA).

The release folder holds two versions side by side:

- version 1: `train.csv`, `test.csv`, `test_clean.csv` (a manually checked subset of `test.csv`), images from
  `images.zip` (unzipped to `images/`); columns `Figure_path`, `Question`, `Answer` (the option text),
  `Choice A`..`Choice D`, `Answer_label` (the letter).
- version 2 (non-compound figures): `train_2.csv`, `test_2.csv` (the dataset card spells them `train2.csv`,
  `test2.csv`: both spellings are read), images from `images_2.zip` (unzipped to `figures/`; `images_2/` or
  `images2/` also found); `Answer` holds the letter and there is no `Answer_label`.

Exactly one file is read per (version, split, test set); the other files of the folder are listed as not read.
The choices carry their own letter ("A:text", " B:text", "A: text"); it is stripped so options are plain texts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline.records import Question
from data_pipeline.sources.base import (
    DEFAULT_IMAGES,
    ImageSettings,
    Item,
    answer_letter,
    iter_rows,
    load_images,
    options_from_list,
    run_rows,
    text_field,
)
from data_pipeline.sources.layout import csv_header, named_files, require_columns, unread_files

NAME = "pmc_vqa"
CHOICES = ("Choice A", "Choice B", "Choice C", "Choice D")
# Per version: the csv of each split / test set, the column holding the letter, the unzipped image folder.
# Version 2's names as the file tree has them first, then as the dataset card writes them.
_FILES = {
    1: {"train": ("train.csv",), "test": ("test.csv",), "test_clean": ("test_clean.csv",)},
    2: {"train": ("train_2.csv", "train2.csv"), "test": ("test_2.csv", "test2.csv")},
}
_ANSWER_COLUMN = {1: "Answer_label", 2: "Answer"}
_IMAGE_DIRS = {1: ("images",), 2: ("figures", "images_2", "images2")}


def _first_present(folder: Path, names: tuple[str, ...]) -> str:
    """The first of `names` present in `folder` (the first name when none is: the error names it)."""
    return next((n for n in names if (folder / n).exists()), names[0])


def _file_key(version: int, split: str, test_set: str) -> str:
    if version not in _FILES:
        raise ValueError(f"PMC-VQA version must be 1 or 2, got {version!r}")
    if test_set not in ("test", "test_clean"):
        raise ValueError(f"PMC-VQA test_set must be 'test' or 'test_clean', got {test_set!r}")
    if split not in ("train", "test"):
        raise ValueError(f"PMC-VQA has splits 'train' and 'test', got {split!r}")
    key = test_set if split == "test" else split
    if key not in _FILES[version]:
        raise ValueError(f"PMC-VQA version {version} has no {key!r} file (test_clean exists for version 1 only)")
    return key


def read_pmc_vqa(
    path: str | Path,
    *,
    split: str = "train",
    version: int = 1,
    test_set: str = "test",
    image_root: str | Path | None = None,
    image_dir: str | None = None,
    images: ImageSettings = DEFAULT_IMAGES,
) -> Iterator[Item]:
    """Reads PMC-VQA multiple-choice questions of one version and split.

    Args:
      path: the release folder (the csv files plus the unzipped image folders) or one csv file.
      split: "train" or "test".
      version: 1 (`train.csv` / `test.csv`, `images/`) or 2 (`train_2.csv` / `test_2.csv`, `figures/`).
      test_set: for split "test": "test" or "test_clean" (version 1's checked subset).
      image_root: the directory holding `image_dir` (default: the folder, or the csv's folder).
      image_dir: subdirectory with the figures (default: the version's, "images" or "figures"; "" for
        `Figure_path` relative to `image_root`).
      images: image checks.

    Yields:
      Question (category "mm_reasoning"), Rejected per bad row, and a Skipped("not_read") for each other
      file of the folder.

    Raises:
      LayoutError: the csv lacks a column of the version (e.g. a version-2 file read as version 1).
      FileNotFoundError: the folder lacks the version's file for the split.
    """
    key = _file_key(version, split, test_set)
    p = Path(path)
    if p.is_dir():
        files = named_files(p, [_first_present(p, _FILES[version][key])], what=f"PMC-VQA version {version} {key} csv")
    elif p.is_file():
        files = [p]
    else:
        raise FileNotFoundError(f"source path does not exist: {p} (adapters read local files, nothing is downloaded)")
    answer_column = _ANSWER_COLUMN[version]
    expected = ("Figure_path", "Question", *CHOICES, answer_column)
    other = 2 if version == 1 else 1
    require_columns(files[0], csv_header(files[0]), expected, hint=f"is it a version-{other} file (version={other})?")
    root = Path(image_root) if image_root is not None else files[0].parent
    subdir = _first_present(root, _IMAGE_DIRS[version]) if image_dir is None else (image_dir or None)

    def build(index: int, row: dict[str, Any]) -> Question:
        figure = text_field(row, "Figure_path")
        return Question(
            id=f"v{version}-{key}-{index}-{Path(figure).stem}",
            source=NAME,
            category="mm_reasoning",
            question=text_field(row, "Question"),
            options=options_from_list([row[c] for c in CHOICES], strip_prefixes=True),
            answer=answer_letter(row.get(answer_column)),
            images=load_images(root, [figure], images, subdir=subdir),
            split=split,
            metadata={"version": str(version), "file": files[0].name},
        )

    rows = run_rows(NAME, iter_rows(files), build)
    return itertools.chain(rows, unread_files(NAME, p, files)) if p.is_dir() else rows
