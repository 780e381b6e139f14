"""MedQA jsonl: `question`, `options` {"A": ..., "E": ...}, `answer` (text), `answer_idx` ("C"), `meta_info`.

The release (`data_clean.zip`, docs/paper.md "Source formats") holds several versions of the same questions:

    data_clean/questions/US/{train,dev,test}.jsonl                                   5 options
    data_clean/questions/US/4_options/phrases_no_exclude_{train,dev,test}.jsonl      4 options
    data_clean/questions/US/metamap_extracted_phrases/..., US/US_qbank.jsonl         never read
    data_clean/questions/Mainland/{train,dev,test}.jsonl, Mainland/4_options/{train,dev,test}.jsonl
    data_clean/questions/Taiwan/{train,dev,test}.jsonl                               4 options
    data_clean/textbooks/...

Exactly one file is read per (region, number of options, split); every other file under the folder given is
reported as a `Skipped(reason="not_read")`. The Hugging Face copies (e.g. GBaker/MedQA-USMLE-4-options, the
`phrases_no_exclude_*.jsonl` files at the top of the folder) are found the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline.records import BadRecordError, Question
from data_pipeline.sources.base import (
    Item,
    answer_letter,
    options_from_mapping,
    run_rows,
    text_field,
)
from data_pipeline.sources.layout import LayoutError, checked_rows, unread_files

NAME = "medqa"
COLUMNS = ("question", "options", "answer_idx")
# The split file of each (region, number of options) inside the region folder; MedQA names validation "dev".
_FILES = {
    ("US", 5): "{split}.jsonl",
    ("US", 4): "4_options/phrases_no_exclude_{split}.jsonl",
    ("Mainland", 5): "{split}.jsonl",
    ("Mainland", 4): "4_options/{split}.jsonl",
    ("Taiwan", 4): "{split}.jsonl",
}
REGIONS = ("US", "Mainland", "Taiwan")
_SPLITS = {"train": "train", "validation": "dev", "dev": "dev", "test": "test"}


def _relative_file(split: str, region: str, num_options: int) -> str:
    if split not in _SPLITS:
        raise ValueError(f"MedQA has the splits {sorted(_SPLITS)}, got {split!r}")
    if (region, num_options) not in _FILES:
        raise ValueError(
            f"MedQA has no region={region!r} with num_options={num_options!r}; "
            f"variants: {sorted(_FILES)} (Taiwan has 4 options only)"
        )
    return _FILES[region, num_options].format(split=_SPLITS[split])


def medqa_file(path: str | Path, *, split: str = "train", region: str = "US", num_options: int = 5) -> Path:
    """The one file MedQA reads for a split and variant.

    Args:
      path: a jsonl file (read as given), or any folder of the release: the unzipped root, `data_clean/`,
        `questions/`, a region folder, its `4_options/` folder, or a flat copy holding the split files.
      split: "train", "validation" (the `dev` files) or "test".
      region: "US" (English), "Mainland" (simplified Chinese) or "Taiwan" (traditional Chinese).
      num_options: 5 (the original files) or 4 (the `4_options` files; Taiwan has only these).

    Raises:
      FileNotFoundError: the folder has no file for the split and variant (lists the paths looked at).
      LayoutError: the folder is another region's, or a `4_options/` folder read with num_options=5.
    """
    rel = _relative_file(split, region, num_options)
    p = Path(path)
    if p.is_file():
        return p
    if not p.exists():
        raise FileNotFoundError(f"source path does not exist: {p} (adapters read local files, nothing is downloaded)")
    region_dir = p.parent if p.name == "4_options" else p
    if region_dir.name in REGIONS and region_dir.name != region:
        raise LayoutError(f"{p} is the MedQA {region_dir.name} folder but region={region!r}; pass region=")
    if p.name == "4_options" and num_options != 4:
        raise LayoutError(f"{p} holds the 4-option files but num_options={num_options}; pass num_options=4")
    candidates = [
        p / "data_clean" / "questions" / region / rel,
        p / "questions" / region / rel,
        p / region / rel,
        p / rel,
        p / Path(rel).name,  # a 4_options folder, or a flat copy (Hugging Face)
    ]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        looked = ", ".join(str(c.relative_to(p)) for c in candidates)
        raise FileNotFoundError(
            f"no MedQA {region} {num_options}-option file for split {split!r} under {p} (looked for {looked})"
        )
    return found


def read_medqa(
    path: str | Path,
    *,
    split: str = "train",
    region: str = "US",
    num_options: int = 5,
    check_answer_text: bool = True,
) -> Iterator[Item]:
    """Reads the MedQA questions of one region, number of options and split.

    Args:
      path: a jsonl file or a folder of the release (see `medqa_file`).
      split: "train", "validation" or "test"; also recorded on each question.
      region: "US" (default), "Mainland" or "Taiwan".
      num_options: 5 (default, the original US files) or 4.
      check_answer_text: reject a row whose `answer` text disagrees with `options[answer_idx]`
        (`answer_mismatch`), which catches shifted or mislabelled rows.

    Yields:
      Question (category "text") or Rejected; then, for a folder, a Skipped("not_read") per other file under
      it. Ids are `{split}-{row index}` (MedQA has no id field).

    Raises:
      LayoutError: the file lacks a MedQA column, or its questions have another number of options.
    """
    file = medqa_file(path, split=split, region=region, num_options=num_options)

    def build(index: int, row: dict[str, Any]) -> Question:
        options = options_from_mapping(row["options"])
        letter = answer_letter(row.get("answer_idx"))
        answer_text = row.get("answer")
        if check_answer_text and answer_text is not None and letter in options:
            if str(answer_text).strip().lower() != options[letter].lower():
                raise BadRecordError(
                    "answer_mismatch", f"answer {answer_text!r} != option {letter} {options[letter]!r}"
                )
        meta = {"region": region, "num_options": str(num_options)}
        if row.get("meta_info"):
            meta["meta_info"] = str(row["meta_info"])
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

    rows = _option_count_checked(checked_rows([file], COLUMNS), file, num_options)
    items = run_rows(NAME, rows, build)
    p = Path(path)
    return itertools.chain(items, unread_files(NAME, p, [file], recursive=True)) if p.is_dir() else items


def _option_count_checked(rows: Iterator[tuple[int, Any]], file: Path, num_options: int) -> Iterator[tuple[int, Any]]:
    """Passes the rows on; a first row with the other variant's number of options (4 or 5) is an error."""
    for index, row in rows:
        if index == 0 and isinstance(row, dict) and isinstance(row.get("options"), dict):
            n = len(row["options"])
            if n != num_options and n in {v for _, v in _FILES}:
                raise LayoutError(f"{file}: its questions have {n} options, not {num_options}; pass num_options={n}")
        yield index, row
