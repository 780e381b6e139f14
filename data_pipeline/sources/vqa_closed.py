"""VQA-RAD and SLAKE: closed yes/no questions become two-option multiple choice (A: yes, B: no).

Layouts read:

- VQA-RAD, original release (OSF): `VQA_RAD Dataset Public.json` (beside its .xml / .xlsx copies, listed as not
  read) and `VQA_RAD Image Folder/`; fields `qid`, `image_name`, `question`, `answer`, `answer_type`
  ("OPEN" / "CLOSED"), `phrase_type` (all splits in one file: "test_freeform" / "test_para" are the test split).
- VQA-RAD, Hugging Face copy (flaviagiammarino/vqa-rad): `data/{train,test}-*.parquet` with `image`
  ({bytes, path}), `question`, `answer` only. It has no `answer_type`, so a row is taken as closed when its
  answer is yes or no, and any other answer is an open question (Skipped "open_question"). Closed questions
  with another answer ("left") cannot be told apart there; they are counted as open.
- SLAKE (`train.json`, `validate.json`, `test.json`, `imgs/xmlabN/source.jpg`): fields `qid`, `img_name`,
  `question`, `answer`, `answer_type`, `q_lang` ("en" / "zh"). Chinese closed answers are mapped to yes/no
  (是 / 是的 / 有 / 包含 / 存在 ... and 否 / 不是 / 没有 / 不包含 / 不存在 ...) and their options are shown in
  Chinese (A: 是, B: 否), the language of the question.

Open questions and other languages are left out by design (Skipped); a closed question whose answer is not
yes/no (e.g. "Left", "CT") is counted as `closed_not_yes_no`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from data_pipeline.records import BadRecordError, Question
from data_pipeline.sources.base import (
    DEFAULT_IMAGES,
    SPLIT_ALIASES,
    Excluded,
    ImageSettings,
    Item,
    _records_in,
    find_files,
    image_from_value,
    iter_rows,
    read_json_any,
    run_rows,
    text_field,
)
from data_pipeline.sources.layout import LayoutError, parquet_columns, require_columns, unread_files

# The options shown, in the question's language, and the answers that mean yes / no in it.
OPTIONS = {"en": {"A": "yes", "B": "no"}, "zh": {"A": "是", "B": "否"}}
YES_NO_OPTIONS = OPTIONS["en"]
_YES = {"yes", "是", "是的", "有", "包含", "存在", "对", "正常"}
_NO = {"no", "否", "不是", "没有", "无", "不包含", "不存在", "不对", "不正常"}
_META_FIELDS = ("image_organ", "question_type", "location", "modality", "content_type", "q_lang")

VQA_RAD_JSON = "VQA_RAD Dataset Public.json"
_VQA_RAD_JSON_FIELDS = ("qid", "image_name", "question", "answer", "answer_type", "phrase_type")
_VQA_RAD_HF_COLUMNS = ("image", "question", "answer")
_SLAKE_FIELDS = ("qid", "img_name", "question", "answer", "answer_type", "q_lang")
_SLAKE_FILES = {"train": "train.json", "validation": "validate.json", "test": "test.json"}


def closed_answer(answer: str) -> str:
    """The letter of a closed yes/no answer in English or Chinese ("Yes", "是的" -> A; "no.", "不包含" -> B).

    Raises:
      BadRecordError: `closed_not_yes_no` for any other answer.
    """
    text = str(answer).strip().lower().rstrip(".。")
    if text in _YES:
        return "A"
    if text in _NO:
        return "B"
    raise BadRecordError("closed_not_yes_no", f"closed answer {answer!r} is not yes/no")


def _json_rows(file: Path, fields: Sequence[str]) -> list[tuple[int, Any]]:
    """The records of a whole-file JSON release, after checking the first one has the format's fields."""
    rows = _records_in(read_json_any(file))
    if rows and isinstance(rows[0], dict):
        require_columns(file, rows[0], fields)
    return list(enumerate(rows))


def _closed_question(
    name: str, index: int, row: dict[str, Any], *, split: str, root: Path, image_dir: str | None, images: ImageSettings
) -> Question:
    """A closed row -> Question; the language (`q_lang`, default English) picks the options shown."""
    lang = str(row.get("q_lang", "en")).lower()
    image_value = row.get("image") or text_field(row, "image_name", "img_name")
    return Question(
        id=str(row.get("qid", f"{split}-{index}")),
        source=name,
        category="mm_reasoning",
        question=text_field(row, "question"),
        options=dict(OPTIONS.get(lang, YES_NO_OPTIONS)),
        answer=closed_answer(text_field(row, "answer")),
        images=(image_from_value(image_value, root, images, subdir=image_dir),),
        split=split,
        metadata={k: str(row[k]) for k in _META_FIELDS if row.get(k) not in (None, "")},
    )


def _vqa_rad_layout(p: Path, layout: str | None) -> str:
    if layout is not None:
        if layout not in ("original", "hf"):
            raise ValueError(f"VQA-RAD layout must be 'original' or 'hf', got {layout!r}")
        return layout
    if p.is_file():
        return "hf" if p.suffix.lower() == ".parquet" else "original"
    has_json = (p / VQA_RAD_JSON).is_file()
    has_parquet = any(p.rglob("*.parquet"))
    if has_json and has_parquet:
        raise LayoutError(f"{p} holds both the original json and a parquet copy; pass layout='original' or 'hf'")
    if not has_json and not has_parquet:
        raise FileNotFoundError(f"neither {VQA_RAD_JSON!r} nor a parquet copy under {p} (nothing is downloaded)")
    return "original" if has_json else "hf"


def read_vqa_rad(
    path: str | Path,
    *,
    split: str = "train",
    layout: str | None = None,
    image_root: str | Path | None = None,
    image_dir: str | None = "VQA_RAD Image Folder",
    images: ImageSettings = DEFAULT_IMAGES,
) -> Iterator[Item]:
    """Reads VQA-RAD closed yes/no questions, from the original json or the Hugging Face parquet copy.

    Args:
      path: the release folder, the json file, or the HF copy's folder / a parquet file.
      split: "train" or "test" (original: from `phrase_type`; HF: from the file name).
      layout: "original" or "hf" (default: detected from the files present).
      image_root: directory holding `image_dir` (original layout; default: the json's directory).
      image_dir: subdirectory with the images (None: names are relative to `image_root`).
      images: image checks.

    Yields:
      Question (category "mm_reasoning"), Rejected, Skipped (open questions, other split, files not read).

    Raises:
      LayoutError: a file lacks the fields of its layout, or a folder holds both layouts without `layout`.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"source path does not exist: {p} (adapters read local files, nothing is downloaded)")
    kind = _vqa_rad_layout(p, layout)
    if kind == "hf":
        files = find_files(p, split, (".parquet",))
        for f in files:
            require_columns(f, parquet_columns(f), _VQA_RAD_HF_COLUMNS)
        rows: Any = iter_rows(files)

        def build(index: int, row: dict[str, Any]) -> Question:
            if str(row.get("answer", "")).strip().lower().rstrip(".") not in ("yes", "no"):
                raise Excluded("open_question", f"row {index}: answer {row.get('answer')!r} is not yes/no")
            return _closed_question("vqa_rad", index, row, split=split, root=p, image_dir=None, images=images)

    else:
        files = [p] if p.is_file() else [p / VQA_RAD_JSON]
        rows = _json_rows(files[0], _VQA_RAD_JSON_FIELDS)
        root = Path(image_root) if image_root is not None else files[0].parent

        def build(index: int, row: dict[str, Any]) -> Question:
            if str(row.get("answer_type", "")).strip().upper() != "CLOSED":
                raise Excluded("open_question", f"row {index}: answer_type {row.get('answer_type')!r}")
            phrase = str(row.get("phrase_type", ""))
            if ("test" if phrase.startswith("test") else "train") != split:
                raise Excluded("other_split", f"row {index}: phrase_type {phrase!r}")
            return _closed_question("vqa_rad", index, row, split=split, root=root, image_dir=image_dir, images=images)

    items = run_rows("vqa_rad", rows, build)
    return itertools.chain(items, unread_files("vqa_rad", p, files, recursive=kind == "hf")) if p.is_dir() else items


def read_slake(
    path: str | Path,
    *,
    split: str = "train",
    image_root: str | Path | None = None,
    image_dir: str | None = "imgs",
    languages: tuple[str, ...] = ("en",),
    images: ImageSettings = DEFAULT_IMAGES,
) -> Iterator[Item]:
    """Reads SLAKE closed yes/no questions (English only by default; "zh" adds the Chinese ones).

    Args:
      path: the release folder (`train.json`, `validate.json`, `test.json`, `imgs/`) or one json file.
      split: "train", "validation" (`validate.json`) or "test".
      image_root: directory holding `image_dir` (default: the json's directory).
      image_dir: subdirectory with the image folders (`xmlab102/source.jpg`).
      languages: `q_lang` values to keep ("en", "zh").
      images: image checks.

    Yields:
      Question (category "mm_reasoning"), Rejected, Skipped (open, other language, files not read).

    Raises:
      LayoutError: the json's records lack a SLAKE field.
    """
    p = Path(path)
    if p.is_dir():
        split_key = next((k for k, aliases in SPLIT_ALIASES.items() if split in aliases), split)
        if split_key not in _SLAKE_FILES:
            raise ValueError(f"SLAKE has splits {sorted(_SLAKE_FILES)}, got {split!r}")
        file = p / _SLAKE_FILES[split_key]
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found: the SLAKE {split} split (nothing is downloaded)")
    elif p.is_file():
        file = p
    else:
        raise FileNotFoundError(f"source path does not exist: {p} (adapters read local files, nothing is downloaded)")
    root = Path(image_root) if image_root is not None else file.parent
    unknown = sorted(set(languages) - set(OPTIONS))
    if unknown:
        raise ValueError(f"SLAKE languages are {sorted(OPTIONS)}, got {unknown}")

    def build(index: int, row: dict[str, Any]) -> Question:
        if str(row.get("answer_type", "")).strip().upper() != "CLOSED":
            raise Excluded("open_question", f"row {index}: answer_type {row.get('answer_type')!r}")
        if str(row.get("q_lang", "")).lower() not in languages:
            raise Excluded("other_language", f"row {index}: q_lang {row.get('q_lang')!r} not in {sorted(languages)}")
        return _closed_question("slake", index, row, split=split, root=root, image_dir=image_dir, images=images)

    items = run_rows("slake", _json_rows(file, _SLAKE_FIELDS), build)
    return itertools.chain(items, unread_files("slake", p, [file])) if p.is_dir() else items
