"""Release layouts: the named files of one split and variant, their columns, and the files not read.

An adapter pointed at a release folder reads exactly the files its split and variant name (`named_files`),
checks that each has the columns of its format (`require_columns`: a `LayoutError` naming the file and the
columns expected, not a stream of `malformed_record` rejections), and reports every other file of the folder
as a `Skipped(reason="not_read")` (`unread_files`), so the build log and manifest show what was left alone.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from data_pipeline.sources.base import NOT_READ, Skipped, _RowError, iter_rows


class LayoutError(ValueError):
    """A release file or folder that is not in the shape its adapter reads; names the path and what to do."""


def named_files(folder: Path, names: Sequence[str], *, what: str) -> list[Path]:
    """The files `folder/name` for each of `names`.

    Raises:
      FileNotFoundError: naming `what`, the folder and the missing names.
    """
    files = [folder / n for n in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"no {what} under {folder}: missing {missing}; pass the file itself")
    return files


def csv_header(file: Path) -> list[str]:
    """The column names of a csv file (its first row)."""
    with file.open(encoding="utf-8-sig", newline="") as fh:
        return next(csv.reader(fh), [])


def parquet_columns(file: Path) -> list[str]:
    """The column names of a parquet file (from its schema, no rows read)."""
    import pyarrow.parquet as pq  # only the parquet sources need pyarrow

    return list(pq.ParquetFile(file).schema_arrow.names)


def require_columns(file: Path, columns: Iterable[str], expected: Sequence[str], *, hint: str = "") -> None:
    """Raises LayoutError when `columns` (a header, or a record's keys) lacks any of `expected`."""
    present = set(columns)
    missing = [c for c in expected if c not in present]
    if missing:
        raise LayoutError(
            f"{file}: expected the columns {list(expected)}, missing {missing} (found {sorted(present)})"
            + (f"; {hint}" if hint else "")
        )


def not_read(source: str, path: Path, message: str) -> Skipped:
    """The `Skipped(reason="not_read")` for a file or folder of the release that the adapter leaves alone.

    Its index is -1: it counts a file, not a row.
    """
    return Skipped(source, -1, NOT_READ, message, file=str(path))


def unread_files(source: str, folder: Path, read: Sequence[Path], *, recursive: bool = False) -> Iterator[Skipped]:
    """A `not_read` for each file of `folder` (and below it if `recursive`) that is not in `read`."""
    chosen = {f.resolve() for f in read}
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    for f in sorted(p for p in candidates if p.is_file() and p.resolve() not in chosen):
        yield not_read(source, f, f"{f.relative_to(folder)} is not read")


def checked_rows(
    files: Sequence[Path],
    expected: Sequence[str],
    rows_of: Callable[[Path], Iterable[Any]] | None = None,
    *,
    hint: str = "",
) -> Iterator[tuple[int, Any]]:
    """(index, row) over `files`, the index running across them; each file's first record must have `expected`.

    Args:
      files: the files read, in order.
      expected: the columns every record of the format has.
      rows_of: the records of one file (default: those `iter_rows` reads); an adapter whose files nest their
        records (exams holding questions) flattens them here.
      hint: added to the error (which option selects the other layout).

    Raises:
      LayoutError: when a file's first record lacks one of `expected` (raised as that file is reached).
    """
    index = 0
    for f in files:
        rows = rows_of(f) if rows_of is not None else (row for _, row in iter_rows([f]))
        checked = False
        for row in rows:
            if not checked and not isinstance(row, _RowError):
                require_columns(f, row if isinstance(row, dict) else (), expected, hint=hint)
                checked = True
            yield index, row
            index += 1
