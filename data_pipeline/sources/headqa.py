"""HeadQA json: exams holding questions with `qid`, `qtext`, `ra` (the right answer's `aid`, 1-based),
`answers` [{`aid`, `atext`}] and an optional `image` path.

Both layouts are read: the original `{"exams": {name: {"data": [...], "year", "category"}}}` and the flat
list of the Hugging Face copy (one object per question with `name`, `year`, `category`). Questions with an
image are "mm_reasoning", the rest "text".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline.records import BadRecordError, Question
from data_pipeline.sources.base import (
    DEFAULT_IMAGES,
    ImageSettings,
    Item,
    find_files,
    image_from_value,
    iter_rows,
    read_json_any,
    root_of,
    run_rows,
    text_field,
)

NAME = "headqa"


def _flatten(files: list[Path]) -> Iterator[tuple[int, Any]]:
    """(index, question row) over the exams, each row carrying its exam's name, year and category."""
    index = 0
    for f in files:
        if f.suffix.lower() != ".json":  # parquet / jsonl copies are already flat
            for _, row in iter_rows([f]):
                yield index, row
                index += 1
            continue
        obj = read_json_any(f)
        exams = obj.get("exams") if isinstance(obj, dict) else None
        if exams is None:
            rows: list[Any] = obj if isinstance(obj, list) else [obj] if "qid" in obj else obj.get("data", [])
            for row in rows:
                yield index, row
                index += 1
            continue
        exam_list = exams.values() if isinstance(exams, dict) else exams
        for exam_key, exam in zip(exams if isinstance(exams, dict) else range(len(exams)), exam_list, strict=True):
            info = {k: exam.get(k) for k in ("year", "category")}
            info["name"] = exam.get("name", str(exam_key))
            for row in exam.get("data", []):
                yield index, ({**info, **row} if isinstance(row, dict) else row)
                index += 1


def read_headqa(
    path: str | Path,
    *,
    split: str = "train",
    image_root: str | Path | None = None,
    images: ImageSettings = DEFAULT_IMAGES,
) -> Iterator[Item]:
    """Reads HeadQA questions.

    Args:
      path: a json file (e.g. `train_HEAD_EN.json`) or a directory with split files.
      split: the split to read and record.
      image_root: where `image` paths are resolved (default: the file's directory).
      images: image checks.

    Yields:
      Question or Rejected. The answer letter is the position of the answer whose `aid == ra` among the
      answers sorted by `aid`.
    """
    files = find_files(path, split, (".json", ".jsonl", ".parquet"))
    root = root_of(files, path, image_root)

    def build(index: int, row: dict[str, Any]) -> Question:
        answers = sorted(row["answers"], key=lambda a: int(a["aid"]))
        aids = [int(a["aid"]) for a in answers]
        ra = int(row["ra"])
        if ra not in aids:
            raise BadRecordError("answer_not_in_options", f"ra={ra} is not among answer ids {aids}")
        options = {chr(ord("A") + i): str(a["atext"]).strip() for i, a in enumerate(answers)}
        image = row.get("image")
        refs = (image_from_value(image, root, images),) if image else ()
        meta = {k: str(row[k]) for k in ("name", "year", "category") if row.get(k) not in (None, "")}
        return Question(
            id=f"{row.get('name', split)}-{row['qid']}",
            source=NAME,
            category="mm_reasoning" if refs else "text",
            question=text_field(row, "qtext"),
            options=options,
            answer=chr(ord("A") + aids.index(ra)),
            images=refs,
            split=split,
            metadata=meta,
        )

    return run_rows(NAME, _flatten(files), build)
