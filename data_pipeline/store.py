"""A resumable store of teacher completions in SQLite.

Rows are keyed by (question key, teacher name, prompt version, sample index); the question key is
`Question.key`, a hash of the question's content, so two different questions never share a completion.
Each response is written in its own transaction as it arrives, in WAL mode: rows committed before a
SIGKILL survive it, and the primary key (with INSERT OR IGNORE) means nothing is ever stored twice. A
restarted run asks `missing` which sample indices are still needed and requests only those.

Judge outputs live in the same table under the judge's own teacher name and prompt version.

SQLite's WAL needs a local file system: give each job of a sharded build its own store file.

A full disk, a read-only folder or a damaged file raises one `storage.StorageError` naming the store file;
the rows committed before it stay, so the rerun (after freeing space) requests only the missing ones.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from data_pipeline.records import KEY_GLOB, Question
from data_pipeline.storage import storage_errors
from data_pipeline.teachers import Completion

_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
  question_key TEXT NOT NULL,
  teacher TEXT NOT NULL,
  prompt_version TEXT NOT NULL,
  sample_index INTEGER NOT NULL,
  content TEXT NOT NULL,
  reasoning_content TEXT,
  finish_reason TEXT,
  prompt_tokens INTEGER NOT NULL DEFAULT 0,
  completion_tokens INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (question_key, teacher, prompt_version, sample_index)
) WITHOUT ROWID;
"""

_COLUMNS = (
    "question_key, teacher, prompt_version, sample_index, content, reasoning_content, finish_reason, "
    "prompt_tokens, completion_tokens"
)


_KEPT = "Completions stored before this are kept and will not be requested again."
_READING = "read the completion store"


def _qkey(question: Question | str) -> str:
    return question if isinstance(question, str) else question.key


def _tid(teacher: Any) -> tuple[str, str]:
    """(name, prompt_version) of a Teacher, a TeacherConfig, or a (name, version) pair."""
    if isinstance(teacher, tuple):
        return str(teacher[0]), str(teacher[1])
    return str(teacher.name), str(teacher.prompt_version)


class CompletionStore:
    """SQLite-backed completions, safe to share between threads of one process.

    Several processes may open the same file (SQLite locks it), but a sharded build is simpler and
    faster with one file per job.
    """

    def __init__(self, path: str, *, timeout_s: float = 60.0):
        """Opens (creating if needed) the store at `path`; ":memory:" works for tests."""
        self.path = path
        self._lock = threading.Lock()
        with storage_errors(path, "open the completion store"):
            if path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per response.
            self._conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode loses nothing on a process crash (only, possibly, on power loss).
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)

    def __enter__(self) -> CompletionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection."""
        with self._lock:
            self._conn.close()

    def put(self, completions: Iterable[Completion]) -> int:
        """Stores one response's completions in one transaction; returns how many rows were new.

        Rows already present (same key) are left as they are, so a retried or duplicated response
        never stores anything twice.

        Raises:
          StorageError: the disk is full, the folder read-only, the file damaged (names the file).
        """
        rows = [
            (
                c.question_key,
                c.teacher,
                c.prompt_version,
                int(c.sample_index),
                c.content,
                c.reasoning_content,
                c.finish_reason,
                int(c.prompt_tokens),
                int(c.completion_tokens),
            )
            for c in completions
        ]
        if not rows:
            return 0
        with self._lock, storage_errors(self.path, "store completions", _KEPT):
            before = self._conn.total_changes
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    f"INSERT OR IGNORE INTO completions ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", rows
                )
                self._conn.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself on some errors (SQLITE_FULL); a second ROLLBACK would then
                # replace the real error with "cannot rollback - no transaction is active".
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            return self._conn.total_changes - before

    def indices(self, question: Question | str, teacher: Any) -> set[int]:
        """Sample indices already stored for this question and teacher."""
        name, version = _tid(teacher)
        with self._lock, storage_errors(self.path, _READING):
            cur = self._conn.execute(
                "SELECT sample_index FROM completions WHERE question_key=? AND teacher=? AND prompt_version=?",
                (_qkey(question), name, version),
            )
            return {r[0] for r in cur.fetchall()}

    def missing(self, question: Question | str, teacher: Any, n: int) -> list[int]:
        """Sample indices in range(n) still to request for this question and teacher, ascending."""
        have = self.indices(question, teacher)
        return [i for i in range(n) if i not in have]

    def get(self, question: Question | str, teacher: Any, n: int | None = None) -> list[Completion]:
        """Stored completions of a question for a teacher, by sample index (only indices < n if given)."""
        name, version = _tid(teacher)
        with self._lock, storage_errors(self.path, _READING):
            cur = self._conn.execute(
                f"SELECT {_COLUMNS} FROM completions WHERE question_key=? AND teacher=? AND prompt_version=? "
                "ORDER BY sample_index",
                (_qkey(question), name, version),
            )
            rows = cur.fetchall()
        out = [Completion(*r) for r in rows]
        return [c for c in out if n is None or c.sample_index < n]

    def count(self, teacher: Any | None = None) -> int:
        """Number of stored completions (of one teacher, if given)."""
        with self._lock, storage_errors(self.path, _READING):
            if teacher is None:
                return self._conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
            name, version = _tid(teacher)
            return self._conn.execute(
                "SELECT COUNT(*) FROM completions WHERE teacher=? AND prompt_version=?", (name, version)
            ).fetchone()[0]

    def legacy_count(self) -> int:
        """Completions stored under question keys of an earlier layout ("<source>/<release id>").

        Those keys did not cover the question's content (two questions with one id shared completions), so
        they are never looked up: a build over such a store requests those samples again.
        """
        with self._lock, storage_errors(self.path, _READING):
            return self._conn.execute(
                "SELECT COUNT(*) FROM completions WHERE question_key NOT GLOB ?", (KEY_GLOB,)
            ).fetchone()[0]

    def iter_all(self) -> Iterator[Completion]:
        """Every stored completion in key order (for inspection and export)."""
        with self._lock, storage_errors(self.path, _READING):
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM completions ORDER BY question_key, teacher, prompt_version, sample_index"
            ).fetchall()
        for r in rows:
            yield Completion(*r)
