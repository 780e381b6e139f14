"""HeadQA: exams holding questions with `qid`, `qtext`, `ra` (the right answer's `aid`, from 1), `answers`
[{`aid`, `atext`}] and an optional `image`.

Two layouts (docs/paper.md "Source formats"):

- the archive as downloaded: `HEAD/` (Spanish) and `HEAD_EN/` (English) side by side, each with
  `{train,dev,test}_HEAD[_EN].json` (`{"exams": {name: {"name", "year", "category", "data": [...]}}}`), the
  whole set `HEAD[_EN].json` and one `.gold` file per exam; `images/` at the archive root, which is what the
  `image` paths are relative to (`images/xxx.jpg`).
- the Hugging Face copy (`head_qa`, configs `en` / `es`): `{en,es}/{train,validation,test}-*.parquet`, one
  row per question with `name`, `year`, `category` and `image` as a Hugging Face image struct.

Exactly one language and split is read (English by default); every other file is reported as a
`Skipped(reason="not_read")`, the images folder aside. Questions with an image are "mm_reasoning", the rest
"text".
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from data_pipeline.records import BadRecordError, Question
from data_pipeline.sources.base import (
    DEFAULT_IMAGES,
    ImageSettings,
    Item,
    Skipped,
    image_from_value,
    iter_rows,
    read_json_any,
    run_rows,
    text_field,
)
from data_pipeline.sources.layout import LayoutError, checked_rows, not_read

NAME = "headqa"
COLUMNS = ("qid", "qtext", "ra", "answers")
LANGUAGE_DIRS = {"en": "HEAD_EN", "es": "HEAD"}  # the archive's folder (and file suffix) per language
IMAGE_DIR = "images"
_SPLITS = {"train": "train", "validation": "dev", "dev": "dev", "test": "test"}  # the archive's names
_HF_SPLITS = {"train": "train", "validation": "validation", "dev": "validation", "test": "test"}


def _file_language(file: Path) -> str | None:
    """The language an archive file's name says (`train_HEAD_EN.json` -> "en"), None for other names."""
    stem = file.stem
    return next((lang for lang, d in LANGUAGE_DIRS.items() if stem == d or stem.endswith(f"_{d}")), None)


def headqa_files(path: str | Path, *, split: str = "train", language: str = "en") -> tuple[list[Path], Path]:
    """The files HeadQA reads for a split and language, and the folder `image` paths are relative to.

    Args:
      path: a json / parquet file (read as given), the unpacked archive (holding `HEAD/` and `HEAD_EN/`), one
        language folder of it, or a Hugging Face copy (holding `en/` and `es/`, or one of them).
      split: "train", "validation" (the archive's `dev` files) or "test".
      language: "en" (default) or "es".

    Raises:
      FileNotFoundError: nothing for the split and language (lists the paths looked at).
      LayoutError: a file or folder of the other language, or a folder holding both layouts.
    """
    if language not in LANGUAGE_DIRS:
        raise ValueError(f"HeadQA language must be one of {sorted(LANGUAGE_DIRS)}, got {language!r}")
    if split not in _SPLITS:
        raise ValueError(f"HeadQA has the splits {sorted(_SPLITS)}, got {split!r}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"source path does not exist: {p} (adapters read local files, nothing is downloaded)")
    if p.is_file():
        if _file_language(p) not in (None, language):
            raise LayoutError(f"{p} is a HeadQA {_file_language(p)!r} file but language={language!r}; pass language=")
        return [p], _archive_root(p.parent)
    if p.name in {n for lang, d in LANGUAGE_DIRS.items() if lang != language for n in (lang, d)}:
        raise LayoutError(f"{p} is the HeadQA folder of another language than {language!r}; pass language=")
    lang_dir = LANGUAGE_DIRS[language]
    name = f"{_SPLITS[split]}_{lang_dir}.json"
    archive = [c for c in (p / lang_dir / name, p / name) if c.is_file()]
    hf_dirs = [p / language, p] if p.name == language else [p / language]
    hf = sorted(f for d in hf_dirs for f in d.glob(f"{_HF_SPLITS[split]}-*.parquet"))
    if archive and hf:
        raise LayoutError(f"{p} holds both the HeadQA archive json and a parquet copy; pass one of the files")
    if archive:
        return archive[:1], _archive_root(archive[0].parent)
    if hf:
        return hf, p
    raise FileNotFoundError(
        f"no HeadQA {language} file for split {split!r} under {p} (looked for {lang_dir}/{name}, {name}, "
        f"{language}/{_HF_SPLITS[split]}-*.parquet)"
    )


def _archive_root(folder: Path) -> Path:
    """The folder the release's `images/...` paths are relative to: above `HEAD/` or `HEAD_EN/`."""
    return folder.parent if folder.name in LANGUAGE_DIRS.values() else folder


def _questions(file: Path) -> Iterator[Any]:
    """The question records of one file, each carrying its exam's name, year and category."""
    if file.suffix.lower() != ".json":  # parquet / jsonl copies are already one row per question
        yield from (row for _, row in iter_rows([file]))
        return
    obj = read_json_any(file)
    exams = obj.get("exams") if isinstance(obj, dict) else None
    if exams is None:  # a flat list of questions
        yield from obj if isinstance(obj, list) else [obj]
        return
    for exam_key, exam in exams.items() if isinstance(exams, dict) else enumerate(exams):
        info = {k: exam.get(k) for k in ("year", "category")}
        info["name"] = exam.get("name", str(exam_key))
        for row in exam.get("data", []):
            yield {**info, **row} if isinstance(row, dict) else row


def _unread(root: Path, read: Iterable[Path], image_root: Path) -> Iterator[Skipped]:
    """A not_read per file under `root` other than those read and the images the questions name."""
    chosen = {f.resolve() for f in read}
    images = (image_root / IMAGE_DIR).resolve()
    for f in sorted(root.rglob("*")):
        resolved = f.resolve()
        if f.is_file() and resolved not in chosen and not resolved.is_relative_to(images):
            yield not_read(NAME, f, f"{f.relative_to(root)} is not read (another split, language or the whole set)")


def read_headqa(
    path: str | Path,
    *,
    split: str = "train",
    language: str = "en",
    image_root: str | Path | None = None,
    images: ImageSettings = DEFAULT_IMAGES,
) -> Iterator[Item]:
    """Reads the HeadQA questions of one language and split.

    Args:
      path: a file or folder of either layout (see `headqa_files`).
      split: "train", "validation" or "test"; recorded on each question.
      language: "en" (default) or "es".
      image_root: where `image` paths are resolved (default: the archive root, which holds `images/`).
      images: image checks.

    Yields:
      Question or Rejected, then (for a folder) a Skipped("not_read") per other file. The answer letter is the
      position of the answer whose `aid == ra` among the answers sorted by `aid`.

    Raises:
      LayoutError: a file whose questions lack a HeadQA column (raised when that file is reached).
    """
    files, archive_root = headqa_files(path, split=split, language=language)
    root = Path(image_root) if image_root is not None else archive_root

    def build(index: int, row: dict[str, Any]) -> Question:
        answers = sorted(row["answers"], key=lambda a: int(a["aid"]))
        aids = [int(a["aid"]) for a in answers]
        ra = int(row["ra"])
        if ra not in aids:
            raise BadRecordError("answer_not_in_options", f"ra={ra} is not among answer ids {aids}")
        options = {chr(ord("A") + i): str(a["atext"]).strip() for i, a in enumerate(answers)}
        image = row.get("image")
        if isinstance(image, dict) and not (image.get("bytes") or image.get("path")):
            image = None  # the Hugging Face copy's empty image struct
        refs = (image_from_value(image, root, images),) if image else ()
        meta = {k: str(row[k]).strip() for k in ("name", "year", "category") if row.get(k) not in (None, "")}
        return Question(
            id=f"{str(row.get('name', split)).strip()}-{str(row['qid']).strip()}",
            source=NAME,
            category="mm_reasoning" if refs else "text",
            question=text_field(row, "qtext"),
            options=options,
            answer=chr(ord("A") + aids.index(ra)),
            images=refs,
            split=split,
            metadata={**meta, "language": language},
        )

    items = run_rows(NAME, checked_rows(files, COLUMNS, _questions), build)
    p = Path(path)
    return itertools.chain(items, _unread(p, files, root)) if p.is_dir() else items
