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

The build reads each source through a `ReportedRead`, which keeps a `ReadReport`: per input file the rows
read, the questions, and the rejections and skips by reason, plus the files present under the source path
but not read. Adapters need nothing for it beyond the helpers here: `find_files` names the files it did not
select, `iter_rows` / `read_json_any` say which file the rows come from and `iter_rows` counts them.
"""

from __future__ import annotations

import contextvars
import csv
import dataclasses
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from data_pipeline import images as imglib
from data_pipeline.records import LETTERS, BadRecordError, ImageRef, Question

log = logging.getLogger(__name__)
NOT_READ = "not_read"  # the reason of a `Skipped` that names a whole file left alone (its index is -1)
UNACCOUNTED = "unaccounted"  # rows a reader counted that reached no outcome: an adapter bug, made visible


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


class Row(tuple):
    """An `(index, row)` pair as adapters unpack it, plus `file`: the path of the file it was read from."""

    file: str

    def __new__(cls, index: int, row: Any, file: str) -> Row:
        self = super().__new__(cls, (index, row))
        self.file = file
        return self


# --- Read reports -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class FileCounts:
    """What became of the rows of one input file: `rows == questions + sum(rejected) + sum(skipped)`."""

    rows: int = 0
    questions: int = 0
    rejected: Counter[str] = dataclasses.field(default_factory=Counter)
    skipped: Counter[str] = dataclasses.field(default_factory=Counter)

    def outcomes(self) -> int:
        return self.questions + sum(self.rejected.values()) + sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "questions": self.questions,
            "rejected": dict(sorted(self.rejected.items())),
            "skipped": dict(sorted(self.skipped.items())),
        }


class ReadReport:
    """One read of a source, per input file: rows read, questions, rejections and skips by reason.

    Files are named relative to the source path (the file's name when the path is a file); rows that come
    from no single file (an image folder's listing) are counted under ".". A file whose rows `iter_rows`
    counted and that has fewer outcomes than rows gets the difference as rejected `unaccounted` (logged):
    an adapter that drops rows cannot make them vanish. For a file read otherwise (`read_json_any` and an
    adapter's own flattening) the rows are its outcomes.
    """

    def __init__(self, root: str | Path):
        root = Path(root)
        self._base = os.path.abspath(root if root.is_dir() else root.parent)
        self.files: dict[str, FileCounts] = {}
        self._current = "."
        self._current_path = ""
        self._counted: set[str] = set()  # files whose rows iter_rows counted
        self._listed: set[str] = set()  # files find_files saw under the source path
        self._opened: set[str] = set()
        self._unread: set[str] = set()  # files an adapter reported as not read (`NOT_READ`)
        self.finished = False

    def name(self, path: str | Path) -> str:
        """`path` relative to the source path (as given when outside it)."""
        rel = os.path.relpath(os.path.abspath(path), self._base)
        return str(path) if rel.split(os.sep)[0] == ".." else Path(rel).as_posix()

    def open_file(self, path: Path, *, count_rows: bool) -> None:
        """Rows from now on come from `path`; with `count_rows`, `row_read` counts each of them."""
        self._current, self._current_path = self.name(path), str(path)
        self._opened.add(self._current)
        self.files.setdefault(self._current, FileCounts())
        if count_rows:
            self._counted.add(self._current)

    def row_read(self) -> None:
        self.files[self._current].rows += 1

    @property
    def current_path(self) -> str:
        """The path of the file rows are being read from ("" before any)."""
        return self._current_path

    def listed(self, paths: Iterable[Path]) -> None:
        """Files present under the source path; those never opened are reported as not read."""
        self._listed.update(self.name(p) for p in paths)

    def record(self, item: Item) -> None:
        """Counts one item the adapter yielded against the file of its row."""
        file = getattr(item, "file", "")
        if isinstance(item, Skipped) and item.reason == NOT_READ:
            self._unread.add(self.name(file))
            return
        counts = self.files.setdefault(self.name(file) if file else self._current, FileCounts())
        if isinstance(item, Rejected):
            counts.rejected[item.reason] += 1
        elif isinstance(item, Skipped):
            counts.skipped[item.reason] += 1
        else:
            counts.questions += 1

    def finish(self) -> None:
        """Settles the rows of each file once the adapter is exhausted (see the class docstring)."""
        if self.finished:
            return
        self.finished = True
        for name, counts in self.files.items():
            gap = counts.rows - counts.outcomes()
            if name not in self._counted:
                counts.rows = counts.outcomes()
            elif gap > 0:
                counts.rejected[UNACCOUNTED] += gap
                log.warning(
                    "%s: %d rows read reached no question, rejection or skip (counted %r)", name, gap, UNACCOUNTED
                )

    @property
    def not_read(self) -> list[str]:
        """Files present under the source path that were not read, sorted."""
        return sorted((self._listed - self._opened) | self._unread)

    def to_dict(self) -> dict[str, Any]:
        """`{"input_files": {file: FileCounts.to_dict()}, "not_read": [file, ...]}`, sorted."""
        return {
            "input_files": {k: c.to_dict() for k, c in sorted(self.files.items())},
            "not_read": self.not_read,
        }


_ACTIVE: contextvars.ContextVar[ReadReport | None] = contextvars.ContextVar("active_read_report", default=None)


class ReportedRead(Iterator[Item]):
    """An adapter's items, with `report` filled as they are consumed (finished when they run out).

    The report is active while the adapter runs (its call and each step), so the helpers it uses report to
    it whatever thread consumes the items, and reads outside a `ReportedRead` report nowhere.

    Args:
      read: starts the adapter (called on the first step, so files found at call time are reported too).
      root: the source path, which files are named relative to.
    """

    def __init__(self, read: Callable[[], Iterable[Item]], root: str | Path):
        self.report = ReadReport(root)
        self._read = read
        self._items: Iterator[Item] | None = None

    def __iter__(self) -> ReportedRead:
        return self

    def __next__(self) -> Item:
        token = _ACTIVE.set(self.report)
        try:
            if self._items is None:
                self._items = iter(self._read())
            item = next(self._items)
        except StopIteration:
            self.report.finish()
            raise
        finally:
            _ACTIVE.reset(token)
        self.report.record(item)
        return item


def _open_file(path: Path, *, count_rows: bool) -> None:
    report = _ACTIVE.get()
    if report is not None:
        report.open_file(path, count_rows=count_rows)


# --- Files ------------------------------------------------------------------------------------------------

SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev", "validate"),
    "test": ("test", "testing"),
}


def find_files(
    path: str | Path, split: str, exts: Sequence[str], *, single_file_ok: bool = False, file_name: str | None = None
) -> list[Path]:
    """The input files of one split: `path` itself if a file, else files under it named for the split.

    A file matches when a token of its name (split on `_ - . space`) is an alias of the split
    ("dev" for validation, ...). HF-style shards (`train-00000-of-00002.parquet`) all match and are read in
    name order. With `single_file_ok`, a directory holding exactly one file of the extensions (a release
    with all splits in one file, like VQA-RAD) gives that file. With `file_name`, the file of that name is
    read whatever the split (a release whose one metadata file marks each row's split, like CoronaHack).
    The other files under a directory are reported to the active `ReadReport` (those never read are listed
    as not read), except images (rows name the ones they use) and hidden files (tool state such as `.cache/`
    or `.gitattributes`).

    Raises:
      FileNotFoundError: naming the path, when it does not exist or holds no file for the split.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.exists():
        raise FileNotFoundError(f"source path does not exist: {p} (adapters read local files, nothing is downloaded)")
    aliases = set(SPLIT_ALIASES.get(split, (split,)))
    present = sorted(f for f in p.rglob("*") if f.is_file())
    typed = [f for f in present if f.suffix.lower() in exts]
    if file_name is not None:
        found = [f for f in typed if f.name == file_name]
    else:
        found = [f for f in typed if aliases & set(re.split(r"[_\-. ]+", f.stem.lower()))]
    if not found and file_name is None and single_file_ok and len(typed) == 1:
        found = typed
    if not found:
        wanted = repr(file_name) if file_name is not None else f"{'/'.join(exts)} file for split {split!r}"
        raise FileNotFoundError(f"no {wanted} under {p}; pass the file itself")
    report = _ACTIVE.get()
    if report is not None:
        report.listed(
            f
            for f in present
            if f.suffix.lower() not in imglib.IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in f.relative_to(p).parts)
        )
    return found


def read_json_any(path: Path) -> Any:
    """Whole-file JSON; a file that is in fact JSON lines gives a list (bad lines as `_RowError`).

    Rows read from it are counted against `path` in the active `ReadReport`.
    """
    _open_file(path, count_rows=False)
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


def _file_rows(f: Path) -> Iterator[Any]:
    """The rows of one jsonl / json / csv / parquet file; unparseable rows come as `_RowError`."""
    suffix = f.suffix.lower()
    if suffix == ".jsonl":
        with f.open(encoding="utf-8-sig") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    yield _RowError(f"{f}:{line_no}: invalid JSON: {e}")
    elif suffix == ".json":
        yield from _records_in(read_json_any(f))
    elif suffix in (".csv", ".tsv"):
        with f.open(encoding="utf-8-sig", newline="") as fh:
            yield from csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        import pyarrow.parquet as pq  # only the parquet sources need pyarrow

        for batch in pq.ParquetFile(f).iter_batches(batch_size=256):
            yield from batch.to_pylist()
    else:
        raise ValueError(f"unsupported file type {suffix!r}: {f}")


def iter_rows(files: Iterable[Path]) -> Iterator[Row]:
    """Streams `Row(index, row, file)` over jsonl / json / csv / parquet files; unparseable rows come as
    `_RowError`. Each row is counted against its file in the active `ReadReport`.

    Rows are streamed except for whole-file JSON, which must be parsed at once.
    """
    index = 0
    for f in files:
        _open_file(f, count_rows=True)
        for row in _file_rows(f):
            report = _ACTIVE.get()
            if report is not None:
                report.row_read()
            yield Row(index, row, str(f))
            index += 1


def run_rows(
    source: str, rows: Iterable[tuple[int, Any]], build: Callable[[int, dict[str, Any]], Item | None]
) -> Iterator[Item]:
    """The one loop every adapter uses: build each row, validate it, turn errors into `Rejected`.

    Args:
      source: adapter name for the rejections.
      rows: (index, row) pairs: `Row`s from `iter_rows` (their file goes into each Rejected / Skipped), or an
        adapter's own flattening (then the file being read, when a `ReadReport` knows it).
      build: makes a Question / ReleasedTraces from a row, raises `Excluded(reason)` to leave the row out by
        design (a `Skipped`; returning None is the same with reason "left_out"), raises BadRecordError (counted
        under its reason) or KeyError/TypeError/ValueError for a row missing fields (`malformed_record`).
    """
    for pair in rows:
        index, row = pair
        file = getattr(pair, "file", "") or _current_path()
        if isinstance(row, _RowError):
            yield Rejected(source, index, "malformed_record", row.message, file)
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
            yield Skipped(source, index, e.reason, str(e), file)
        except BadRecordError as e:
            yield Rejected(source, index, e.reason, str(e), file)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            # A row without the fields its format promises: count it, keep going.
            yield Rejected(source, index, "malformed_record", f"row {index}: {type(e).__name__}: {e}", file)
        else:
            yield (
                item
                if item is not None
                else Skipped(source, index, "left_out", f"row {index} left out by design", file)
            )


def _current_path() -> str:
    report = _ACTIVE.get()
    return report.current_path if report is not None else ""


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
