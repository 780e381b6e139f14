"""File errors that name the file: a full disk, a read-only folder, a damaged or unexpected file.

Two error types, both naming the path and saying what to do:

- `StorageError(OSError)`: a file could not be written or read (disk full, quota, read-only folder, no
  permission, I/O error, a damaged SQLite file). `errno` is set when the cause is known (`ENOSPC`,
  `EROFS`, ...) and `filename` is the path. SQLite's and Riegeli's own errors become one of these.
- `ManifestError(ValueError)`: the files of a built data folder disagree with its `manifest.json`
  (missing, changed, or not listed).

Also the one file checksum of the project (`sha256_file`, read in 1 MiB chunks).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sqlite3
from collections.abc import Iterator

HASH_CHUNK = 1 << 20

# What to do, per cause.
_ADVICE = {
    errno.ENOSPC: "the disk is full: free space on it (or write elsewhere), then run the same command again",
    errno.EDQUOT: "the disk quota is used up: free space (or write elsewhere), then run the same command again",
    errno.EROFS: "the folder is on a read-only file system: write elsewhere or remount it read-write",
    errno.EACCES: "no permission to write there: fix the folder's permissions or write elsewhere",
    errno.EPERM: "no permission to write there: fix the folder's permissions or write elsewhere",
    errno.EIO: "the disk reported an I/O error: check it, then run the same command again",
}
_DAMAGED = "the file is damaged: restore it from a copy, or recreate it"
# SQLite primary result codes (`sqlite_errorcode & 0xFF`) that mean a storage problem.
_SQLITE_ERRNO = {13: errno.ENOSPC, 8: errno.EROFS, 10: errno.EIO, 3: errno.EACCES}  # FULL, READONLY, IOERR, PERM
_SQLITE_CANTOPEN, _SQLITE_DAMAGED = 14, (11, 26)  # CANTOPEN; CORRUPT, NOTADB


class StorageError(OSError):
    """A file could not be written or read; the message names it and says what to do."""

    def __init__(self, message: str, path: str, code: int | None = None):
        super().__init__(code, message, path)

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self) -> tuple:  # so that it crosses process boundaries (Grain workers) intact
        return type(self), (self.strerror, self.filename, self.errno)


class ManifestError(ValueError):
    """The files of a built data folder do not match its manifest.json; the message names them."""


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _unwritable_errno(folder: str) -> int | None:
    """EROFS / EACCES when `folder` cannot be written (also for root on a read-only mount), else None."""
    folder = folder or "."
    if not os.path.isdir(folder) or os.access(folder, os.W_OK):
        return None
    return errno.EROFS if os.statvfs(folder).f_flag & os.ST_RDONLY else errno.EACCES


def as_storage_error(e: BaseException, path: str, doing: str, note: str = "") -> StorageError | None:
    """`e` as a `StorageError` naming `path`, or None when `e` is no storage problem.

    Args:
      e: an OSError, a sqlite3.Error, or a RuntimeError from Riegeli / ArrayRecord (these carry only a
        message, in which the C library's strerror text is looked up).
      path: the file (or folder) being written or read.
      doing: what was being done, e.g. "store completions".
      note: a sentence added at the end (e.g. what a rerun keeps).
    """
    reason = str(e)
    code: int | None = None
    damaged = False
    if isinstance(e, OSError) and not isinstance(e, StorageError):
        code, reason = e.errno, e.strerror or str(e)
    elif isinstance(e, sqlite3.Error) and getattr(e, "sqlite_errorcode", None) is not None:
        primary = e.sqlite_errorcode & 0xFF
        reason = f"{e} ({e.sqlite_errorname})"
        if primary in _SQLITE_ERRNO:
            code = _SQLITE_ERRNO[primary]
        elif primary == _SQLITE_CANTOPEN:
            code = _unwritable_errno(os.path.dirname(os.path.abspath(path)))
            if code is None:  # no better cause known: still a file that cannot be opened
                return _make(path, doing, reason, "check that the folder exists and is on a local disk", None, note)
        elif primary in _SQLITE_DAMAGED:
            damaged = True
        else:
            return None
    elif isinstance(e, RuntimeError):
        found = [c for c in _ADVICE if os.strerror(c) in reason]
        if found:
            code = found[0]
        elif "Corrupted" in reason or "should be at least" in reason:
            damaged = True
        else:
            return None
    else:
        return None
    advice = (
        _DAMAGED if damaged else _ADVICE.get(code, "check the disk and the folder, then run the same command again")
    )
    return _make(path, doing, reason, advice, code, note)


def _make(path: str, doing: str, reason: str, advice: str, code: int | None, note: str) -> StorageError:
    return StorageError(
        f"{path}: cannot {doing}: {reason}. {advice[0].upper()}{advice[1:]}.{' ' + note if note else ''}", path, code
    )


@contextlib.contextmanager
def storage_errors(path: str, doing: str, note: str = "") -> Iterator[None]:
    """Re-raises storage problems inside the block as one `StorageError` naming `path` (see `as_storage_error`)."""
    try:
        yield
    except StorageError:
        raise
    except (OSError, sqlite3.Error, RuntimeError) as e:
        err = as_storage_error(e, path, doing, note)
        if err is None:
            raise
        raise err from e
