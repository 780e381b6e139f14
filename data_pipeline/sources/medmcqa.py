"""MedMCQA: `id`, `question`, `opa`..`opd`, `cop` (the correct option), `choice_type`, `exp`, `subject_name`,
`topic_name`.

Two layouts (docs/paper.md "Source formats"), which count `cop` differently:

- the original release: `data/{train,dev,test}.json`, JSON lines, `cop` from 1, the test split unlabelled;
- the Hugging Face copy (openlifescienceai/medmcqa): `data/{train,validation,test}-00000-of-00001.parquet`,
  `cop` from 0, the test split marked with -1.

The base follows the format read (json 1, parquet 0), so neither is shifted by one; `cop_base` overrides it
(a JSON-lines export of the Hugging Face copy needs `cop_base=0`). Every other file of the folder is reported
as a `Skipped(reason="not_read")`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline.records import BadRecordError, Question
from data_pipeline.sources.base import (
    Excluded,
    Item,
    letter_at,
    options_from_list,
    run_rows,
    text_field,
)
from data_pipeline.sources.layout import LayoutError, checked_rows, unread_files

NAME = "medmcqa"
OPTION_FIELDS = ("opa", "opb", "opc", "opd")
COLUMNS = ("question", *OPTION_FIELDS)  # `cop` is absent from the original unlabelled test split
COP_BASE = {".json": 1, ".parquet": 0}  # the original release, the Hugging Face copy
_SPLITS = {"train": "train", "validation": "dev", "dev": "dev", "test": "test"}  # the original's names
_HF_SPLITS = {"train": "train", "validation": "validation", "dev": "validation", "test": "test"}


def medmcqa_files(path: str | Path, *, split: str = "train") -> list[Path]:
    """The files of one split: the file given, or in a folder (or its `data/`) the original `{split}.json` or
    the Hugging Face `{split}-*.parquet` shards.

    Raises:
      FileNotFoundError: no file for the split (lists the names looked for).
      LayoutError: the folder holds both layouts for the split.
    """
    if split not in _SPLITS:
        raise ValueError(f"MedMCQA has the splits {sorted(_SPLITS)}, got {split!r}")
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.exists():
        raise FileNotFoundError(f"source path does not exist: {p} (adapters read local files, nothing is downloaded)")
    folders = (p / "data", p)
    original = [f for d in folders if (f := d / f"{_SPLITS[split]}.json").is_file()]
    hf = sorted(f for d in folders for f in d.glob(f"{_HF_SPLITS[split]}-*.parquet"))
    if original and hf:
        raise LayoutError(f"{p} holds both the original {original[0].name} and the parquet copy; pass one file")
    if not original and not hf:
        raise FileNotFoundError(
            f"no MedMCQA file for split {split!r} under {p} or {p / 'data'} (looked for {_SPLITS[split]}.json and "
            f"{_HF_SPLITS[split]}-*.parquet)"
        )
    return original[:1] or hf


def cop_base_of(files: list[Path], cop_base: int | None) -> int:
    """`cop_base` if given, else the base of the files' format (json 1, parquet 0).

    Raises:
      LayoutError: another format (e.g. a `.jsonl` export), whose base cannot be known: pass cop_base.
    """
    if cop_base is not None:
        if cop_base not in (0, 1):
            raise ValueError(f"cop_base must be 0 or 1, got {cop_base!r}")
        return cop_base
    suffixes = {f.suffix.lower() for f in files}
    bases = {COP_BASE.get(s) for s in suffixes}
    if len(bases) != 1 or None in bases:
        raise LayoutError(
            f"{files[0]}: cannot tell how `cop` is counted in {sorted(suffixes)} files (the original .json counts "
            "from 1, the Hugging Face .parquet from 0); pass cop_base=1 or cop_base=0"
        )
    return bases.pop()


def read_medmcqa(
    path: str | Path, *, split: str = "train", cop_base: int | None = None, single_choice_only: bool = False
) -> Iterator[Item]:
    """Reads the MedMCQA questions of one split.

    Args:
      path: a file, or a folder of either layout (see `medmcqa_files`).
      split: "train", "validation" (the original's `dev`) or "test"; recorded on each question.
      cop_base: how `cop` is counted; default: by the format (original .json 1, Hugging Face .parquet 0).
      single_choice_only: leave out `choice_type == "multi"` rows (their single key is sometimes debatable).

    Yields:
      Question (category "text") or Rejected, then (for a folder) a Skipped("not_read") per other file. The
      unlabelled test split (cop missing or -1) gives `missing_answer` rejections.

    Raises:
      LayoutError: the format's base is unknown (pass cop_base), or a file lacks a MedMCQA column.
    """
    files = medmcqa_files(path, split=split)
    base = cop_base_of(files, cop_base)

    def build(index: int, row: dict[str, Any]) -> Question:
        if single_choice_only and row.get("choice_type") == "multi":
            raise Excluded("multi_choice", f"row {index}: a multiple-answer question")
        cop = row.get("cop")
        if cop is None or cop == "" or int(cop) < 0:
            raise BadRecordError("missing_answer", f"row {index} has no correct option (cop={cop!r})")
        options = options_from_list([row[f] for f in OPTION_FIELDS])
        meta = {k: str(row[k]) for k in ("subject_name", "topic_name", "choice_type") if row.get(k)}
        return Question(
            id=str(row.get("id") or f"{split}-{index}"),
            source=NAME,
            category="text",
            question=text_field(row, "question"),
            options=options,
            answer=letter_at(int(cop), base=base),
            split=split,
            metadata=meta,
        )

    items = run_rows(NAME, checked_rows(files, COLUMNS), build)
    p = Path(path)
    return itertools.chain(items, unread_files(NAME, p, files, recursive=True)) if p.is_dir() else items
