"""The shared convention of the source adapters: outcome types, file discovery, row readers, helpers.

An adapter is a function `read_x(path, *, split="train", ...) -> Iterator[Item]`. It never raises for a
bad row: each row becomes exactly one of

- a validated `Question` (or `ReleasedTraces` for datasets that already carry teacher responses),
- a `Rejected(source, index, reason, message)`: a counted outcome; `reason` is the manifest key
  (`malformed_record`, `empty_question`, `answer_not_in_options`, `missing_image`, `path_escape`, ...),
- a `Skipped(source, index, reason, message)`: a row left out by design (another MMLU-Pro category, another
  language, an open VQA question, a row of another split in a shared file). Selection is not an error, but
  it is counted too (under `skipped:<reason>`): nothing a source holds disappears without a count. A row
  builder says so by raising `Excluded(reason, message)`.

Only a missing input path raises (FileNotFoundError naming it), because then there is nothing to count.
Adapters read local files and never download.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from data_pipeline import images as imglib
from data_pipeline.records import LETTERS, BadRecordError, ImageRef, Question


@dataclasses.dataclass(frozen=True)
class Rejected:
    """A row that could not become a question; counted by `reason` in the manifest.

    Attributes:
      source: adapter name.
      index: 0-based position of the row in the adapter's input (running across files).
      reason: short manifest key, e.g. "missing_image".
      message: human-readable detail (which file, which field).
    """

    source: str
    index: int
    reason: str
    message: str
    file: str = ""  # the input file the row came from, when known


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A row left out by design, not an error; counted as `skipped:<reason>` in the manifest.

    Attributes:
      source, index, message, file: as for `Rejected`.
      reason: why it is not read, e.g. "other_language", "open_question", "other_category", "other_split".
    """

    source: str
    index: int
    reason: str
    message: str
    file: str = ""

    @property
    def count_key(self) -> str:
        return f"skipped:{self.reason}"


class Excluded(Exception):  # noqa: N818  (an outcome, not an error)
    """Raised by a row builder for a row that is left out by design; `run_rows` makes it a `Skipped`."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ReleasedTraces:
    """A question with responses that already exist (OctoMed's released datasets): no teacher call needed.

    The pipeline runs rejection sampling on `responses` exactly as on fresh teacher samples.
    """

    question: Question
    responses: tuple[str, ...]
    teacher: str = "octomed-released"


Item = Question | ReleasedTraces | Rejected | Skipped


@dataclasses.dataclass(frozen=True)
class ImageSettings:
    """How adapters read images (see `data_pipeline.images`)."""

    max_pixels: int = imglib.DEFAULT_MAX_PIXELS
    decode: bool = True  # full decode catches truncated files; False checks the header only (faster)
    load_bytes: bool = True  # False keeps only the checked relative path in the ImageRef


DEFAULT_IMAGES = ImageSettings()


class _RowError:
    """A row the file reader could not parse (bad JSON line); becomes `malformed_record`."""

    def __init__(self, message: str):
        self.message = message


# --- Files ------------------------------------------------------------------------------------------------

SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev", "validate"),
    "test": ("test", "testing"),
}


def find_files(path: str | Path, split: str, exts: Sequence[str], *, single_file_ok: bool = False) -> list[Path]:
    """The input files of one split: `path` itself if a file, else files under it named for the split.

    A file matches when a token of its name (split on `_ - . space`) is an alias of the split
    ("dev" for validation, ...). HF-style shards (`train-00000-of-00002.parquet`) all match and are read in
    name order. With `single_file_ok`, a directory holding exactly one file of the extensions (a release
    with all splits in one file, like VQA-RAD) gives that file.

    Raises:
      FileNotFoundError: naming the path, when it does not exist or holds no file for the split.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.exists():
        raise FileNotFoundError(f"source path does not exist: {p} (adapters read local files, nothing is downloaded)")
    aliases = set(SPLIT_ALIASES.get(split, (split,)))
    found = sorted(
        f
        for f in p.rglob("*")
        if f.is_file() and f.suffix.lower() in exts and aliases & set(re.split(r"[_\-. ]+", f.stem.lower()))
    )
    if not found and single_file_ok:
        found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in exts)
        found = found if len(found) == 1 else []
    if not found:
        raise FileNotFoundError(f"no {'/'.join(exts)} file for split {split!r} under {p}; pass the file itself")
    return found


def read_json_any(path: Path) -> Any:
    """Whole-file JSON; a file that is in fact JSON lines gives a list (bad lines as `_RowError`)."""
    text = path.read_text(encoding="utf-8-sig")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        rows: list[Any] = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    rows.append(_RowError(f"{path}:{line_no}: invalid JSON: {e}"))
        return rows


def _records_in(obj: Any) -> list[Any]:
    """The records in parsed JSON: a list, the one list of objects under a top-level key, or one object."""
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(lists) == 1:
            return lists[0]
        return [obj]  # a one-line JSON-lines file
    raise ValueError(f"expected JSON records, got {type(obj).__name__}")


def iter_rows(files: Iterable[Path]) -> Iterator[tuple[int, Any]]:
    """Streams (index, row) over jsonl / json / csv / parquet files; unparseable rows come as `_RowError`.

    Rows are streamed except for whole-file JSON, which must be parsed at once.
    """
    index = 0
    for f in files:
        suffix = f.suffix.lower()
        if suffix == ".jsonl":
            with f.open(encoding="utf-8-sig") as fh:
                for line_no, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        yield index, json.loads(line)
                    except json.JSONDecodeError as e:
                        yield index, _RowError(f"{f}:{line_no}: invalid JSON: {e}")
                    index += 1
        elif suffix == ".json":
            for row in _records_in(read_json_any(f)):
                yield index, row
                index += 1
        elif suffix in (".csv", ".tsv"):
            with f.open(encoding="utf-8-sig", newline="") as fh:
                for row in csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ","):
                    yield index, row
                    index += 1
        elif suffix == ".parquet":
            import pyarrow.parquet as pq  # only the parquet sources need pyarrow

            for batch in pq.ParquetFile(f).iter_batches(batch_size=256):
                for row in batch.to_pylist():
                    yield index, row
                    index += 1
        else:
            raise ValueError(f"unsupported file type {suffix!r}: {f}")


def run_rows(
    source: str, rows: Iterable[tuple[int, Any]], build: Callable[[int, dict[str, Any]], Item | None]
) -> Iterator[Item]:
    """The one loop every adapter uses: build each row, validate it, turn errors into `Rejected`.

    Args:
      source: adapter name for the rejections.
      rows: (index, row) pairs from `iter_rows` (or an adapter's own flattening).
      build: makes a Question / ReleasedTraces from a row, raises `Excluded(reason)` to leave the row out by
        design (a `Skipped`; returning None is the same with reason "left_out"), raises BadRecordError (counted
        under its reason) or KeyError/TypeError/ValueError for a row missing fields (`malformed_record`).
    """
    for index, row in rows:
        if isinstance(row, _RowError):
            yield Rejected(source, index, "malformed_record", row.message)
            continue
        try:
            if not isinstance(row, dict):
                raise TypeError(f"row is a {type(row).__name__}, expected an object")
            item = build(index, row)
            if isinstance(item, Question):
                item.validate()
            elif isinstance(item, ReleasedTraces):
                item.question.validate()
        except Excluded as e:
            yield Skipped(source, index, e.reason, str(e))
        except BadRecordError as e:
            yield Rejected(source, index, e.reason, str(e))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            # A row without the fields its format promises: count it, keep going.
            yield Rejected(source, index, "malformed_record", f"row {index}: {type(e).__name__}: {e}")
        else:
            yield item if item is not None else Skipped(source, index, "left_out", f"row {index} left out by design")


def outcome_key(item: Rejected | Skipped) -> str:
    """The manifest key an unread row is counted under: its reason, or `skipped:<reason>` by design."""
    return item.count_key if isinstance(item, Skipped) else item.reason


def count_rejections(items: Iterable[Item], counts: Counter[str]) -> Iterator[Question | ReleasedTraces]:
    """Passes good items through and adds each rejected or skipped row to `counts` (`outcome_key`)."""
    for item in items:
        if isinstance(item, Rejected | Skipped):
            counts[outcome_key(item)] += 1
        else:
            yield item


# --- Field helpers ----------------------------------------------------------------------------------------


def text_field(row: Mapping[str, Any], *names: str, default: str | None = None) -> str:
    """The first present field of `names` as stripped text; KeyError naming them when none is present."""
    for name in names:
        value = row.get(name)
        if value is not None:
            return str(value).strip()
    if default is not None:
        return default
    raise KeyError(f"none of the fields {names} is present")


_PREFIX = r"^\s*[\(\[]?\s*{letter}\s*[\)\]]?\s*[:.)\-]\s*"


def strip_option_prefix(text: str, letter: str) -> str:
    """Removes a leading "A:", " A:", "A.", "(A)", "A)" for the given letter (PMC-VQA writes "A:text")."""
    text = str(text)
    stripped = re.sub(_PREFIX.format(letter=re.escape(letter)), "", text, count=1, flags=re.IGNORECASE)
    if stripped == text:  # "(A) text" has no separator after the bracket
        stripped = re.sub(rf"^\s*\(\s*{re.escape(letter)}\s*\)\s*", "", text, count=1, flags=re.IGNORECASE)
    return stripped.strip()


def options_from_list(texts: Sequence[Any], *, strip_prefixes: bool = False) -> dict[str, str]:
    """Letters A, B, ... for a list of option texts (optionally removing "A: " style prefixes)."""
    if len(texts) > len(LETTERS):
        raise BadRecordError("too_many_options", f"{len(texts)} options")
    out = {}
    for letter, t in zip(LETTERS, texts, strict=False):
        t = "" if t is None else str(t)
        out[letter] = strip_option_prefix(t, letter) if strip_prefixes else t.strip()
    return out


def options_from_mapping(options: Mapping[str, Any]) -> dict[str, str]:
    """Letter-keyed options in letter order, keys uppercased, texts stripped."""
    return {str(k).strip().upper(): str(v).strip() for k, v in sorted(options.items(), key=lambda kv: str(kv[0]))}


def letter_at(index: int, *, base: int = 0) -> str:
    """The letter of a `base`-indexed option number; out of range -> `answer_not_in_options`."""
    i = int(index) - base
    if not 0 <= i < len(LETTERS):
        raise BadRecordError("answer_not_in_options", f"answer index {index} (base {base}) is out of range")
    return LETTERS[i]


def answer_letter(value: Any) -> str:
    """An answer letter as written in a row ("C", " c", "(C)", "C: text") -> "C"; else missing_answer."""
    m = re.match(r"^\s*[\(\[]?\s*([A-Za-z])\s*(?:[\)\]:.]|$)", "" if value is None else str(value))
    if not m:
        raise BadRecordError("missing_answer", f"cannot read an answer letter from {value!r}")
    return m.group(1).upper()


def load_images(
    root: Path, names: Iterable[str], settings: ImageSettings, *, subdir: str | None = None
) -> tuple[ImageRef, ...]:
    """Loads each named image under `root` (or `root/subdir`), checked by `images.load_image`."""
    refs = []
    for name in names:
        # Refuse "/etc/x" before joining: "images/" + "/etc/x" would otherwise look relative.
        name = imglib.refuse_absolute(name)
        rel = f"{subdir.rstrip('/')}/{name}" if subdir else name
        refs.append(
            imglib.load_image(
                root,
                rel,
                max_pixels=settings.max_pixels,
                decode=settings.decode,
                load_bytes=settings.load_bytes,
            )
        )
    return tuple(refs)


def as_list(value: Any) -> list[Any]:
    """A field that may be one value, a list, or empty -> list."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def root_of(files: Sequence[Path], path: str | Path, image_root: str | Path | None) -> Path:
    """The directory images are resolved under: `image_root`, else `path` if a directory, else its parent."""
    if image_root is not None:
        return Path(image_root)
    p = Path(path)
    return p if p.is_dir() else files[0].parent


def image_from_value(value: Any, root: Path, settings: ImageSettings, *, subdir: str | None = None) -> ImageRef:
    """One image given the way datasets store it: a path string, raw bytes, or a Hugging Face
    `{"bytes": ..., "path": ...}` struct (bytes win; the path is then only provenance)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return imglib.image_ref_from_bytes(
                value["bytes"], path=value.get("path"), max_pixels=settings.max_pixels, decode=settings.decode
            )
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return imglib.image_ref_from_bytes(bytes(value), max_pixels=settings.max_pixels, decode=settings.decode)
    if not isinstance(value, str) or not value.strip():
        raise BadRecordError("missing_image", f"no usable image in {type(value).__name__} value")
    return load_images(root, [value], settings, subdir=subdir)[0]


def answer_from_value(value: Any, options: Mapping[str, str]) -> str:
    """The answer letter from a letter ("C", "C: text") or, failing that, from an option's exact text."""
    try:
        return answer_letter(value)
    except BadRecordError:
        text = str(value or "").strip().lower()
        matches = [k for k, v in options.items() if v.strip().lower() == text]
        if text and len(matches) == 1:
            return matches[0]
        raise


def options_from_any(row: Mapping[str, Any]) -> dict[str, str]:
    """Options given as an `options`/`choices` dict or list, or as per-letter fields `A`..`J` / `option_A`."""
    value = row.get("options", row.get("choices"))
    if isinstance(value, Mapping):
        return options_from_mapping(value)
    if isinstance(value, (list, tuple)):
        return options_from_list(value, strip_prefixes=True)
    out = {}
    for letter in LETTERS[:10]:
        v = row.get(letter, row.get(f"option_{letter}", row.get(f"option_{letter.lower()}")))
        if v is None:
            break
        out[letter] = str(v).strip()
    if not out:
        raise KeyError("no options field")
    return out
