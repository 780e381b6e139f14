"""A full disk or a read-only folder is one StorageError naming the file; nothing partial is left, and the
rerun completes without requesting a completion the store already holds."""

from __future__ import annotations

import errno
import functools
import glob
import os
import subprocess
import sys

import pytest
from array_record.python import array_record_module
from array_record.python.array_record_module import ArrayRecordWriter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_build import make_config, world  # noqa: E402, F401  (world: the fixture of sources + fake teacher)

from data_pipeline import build  # noqa: E402
from data_pipeline.build import run_build  # noqa: E402
from data_pipeline.storage import ManifestError, StorageError  # noqa: E402
from data_pipeline.store import CompletionStore  # noqa: E402
from data_pipeline.teachers import Completion  # noqa: E402
from data_pipeline.writer import MANIFEST, TraceWriter, shard_paths, verify_source, write_json  # noqa: E402

SOURCES = ("medqa", "pmc_vqa")


class FullStore(CompletionStore):
    """A store whose file may grow by a few pages only: SQLite's own SQLITE_FULL, as on a full disk."""

    def __init__(self, path: str, *, extra_pages: int = 4):
        super().__init__(path)
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        self._conn.execute(f"PRAGMA max_page_count={pages + extra_pages}")


def stored_keys(path: str) -> set[tuple[str, int]]:
    with CompletionStore(path) as st:
        return {(c.question_key, c.sample_index) for c in st.iter_all()}


def leftovers(out: str) -> list[str]:
    """Sort buffers and partial files a failed build must not leave."""
    return glob.glob(os.path.join(out, ".sort-*")) + glob.glob(os.path.join(out, "**", "*.tmp"), recursive=True)


def build_quietly(world, out: str):  # noqa: ANN001, F811
    root, srv = world
    return run_build(make_config(root, srv.base_url), out_dir=out, progress=False, log=lambda s: None)


def test_store_full_disk_keeps_the_real_error_and_committed_rows(tmp_path):
    st = FullStore(str(tmp_path / "s.sqlite"))
    with pytest.raises(StorageError) as e:
        for i in range(1000):
            st.put([Completion("q", "t", "v", i, "x" * 2000)])
    # Not "cannot rollback - no transaction is active": the real cause, the file, and what to do.
    assert str(e.value).startswith(f"{tmp_path / 's.sqlite'}: cannot store completions: database or disk is full")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "s.sqlite")
    assert "free space" in str(e.value) and "will not be requested again" in str(e.value)
    st.close()
    with CompletionStore(str(tmp_path / "s.sqlite")) as again:  # space again: the committed rows are all there
        assert again.missing("q", ("t", "v"), i + 1) == [i]


def test_build_on_a_full_store_disk_fails_once_and_the_rerun_pays_nothing_twice(world, tmp_path, monkeypatch):  # noqa: F811
    out = str(tmp_path / "out")
    store = os.path.join(out, "completions.sqlite")
    monkeypatch.setattr(build, "CompletionStore", functools.partial(FullStore, extra_pages=1))  # ~30 completions
    with pytest.raises(StorageError, match=f"^{store}: cannot store completions: database or disk is full") as e:
        build_quietly(world, out)
    assert e.value.errno == errno.ENOSPC
    assert not leftovers(out) and not os.path.exists(os.path.join(out, MANIFEST))
    paid = stored_keys(store)
    assert paid  # some completions were committed before the disk filled

    monkeypatch.setattr(build, "CompletionStore", CompletionStore)  # space freed
    world[1].served.clear()
    manifest = build_quietly(world, out).manifest
    assert not paid & set(world[1].served)  # nothing already stored is requested again
    assert manifest["sources"]["medqa"]["total"]["traces_kept"] == 40
    assert all(verify_source(out, s) for s in SOURCES) and not leftovers(out)


def full_disk_after(limit: int) -> type:
    """An ArrayRecordWriter that fails as Riegeli does on a full disk once `limit` records were written."""
    written = [0]

    class FullDiskWriter:
        def __init__(self, path: str, options: str):
            self.path, self.writer = path, ArrayRecordWriter(path, options)

        def write(self, record: bytes) -> None:
            if written[0] >= limit:
                raise RuntimeError(f"write() failed: No space left on device; writing {self.path}; at byte 65536")
            written[0] += 1
            self.writer.write(record)

        def close(self) -> None:
            self.writer.close()

    return FullDiskWriter


def test_writer_full_disk_leaves_no_partial_file_and_the_rerun_calls_no_teacher(world, tmp_path, monkeypatch):  # noqa: F811
    out = str(tmp_path / "out")
    build_quietly(world, out)  # a finished build, then a rebuild that runs out of disk in medqa's 40 traces
    monkeypatch.setattr(array_record_module, "ArrayRecordWriter", full_disk_after(30))
    with pytest.raises(StorageError) as e:
        build_quietly(world, out)
    failed = os.path.join(out, "medqa", "medqa.array_record-00000-of-00001")
    assert str(e.value).startswith(f"{failed}: cannot write the shard: write() failed: No space left on device")
    assert e.value.errno == errno.ENOSPC
    assert not leftovers(out)
    # The old manifest went before the first shard it described was replaced: no file lies about them.
    with pytest.raises(ManifestError, match=f"{os.path.join(out, MANIFEST)}: no manifest there"):
        verify_source(out, "medqa")

    monkeypatch.undo()  # space freed
    world[1].attempts.clear()
    manifest = build_quietly(world, out).manifest
    assert not world[1].attempts  # every completion came from the store
    assert [len(verify_source(out, s)) for s in SOURCES] == [len(manifest["files"][s]) for s in SOURCES]


@pytest.fixture
def read_only_dir(tmp_path):
    """An existing folder nobody can write: a read-only tmpfs for root (who ignores permissions), else mode 555."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield str(path)
        path.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)]).returncode:
        pytest.skip("root without mount permission: no way to make a read-only folder")
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_read_only_folder_is_one_error_naming_the_path(read_only_dir):
    store = os.path.join(read_only_dir, "completions.sqlite")
    with pytest.raises(StorageError, match=f"^{store}: cannot open the completion store") as e:
        CompletionStore(store)
    assert e.value.errno in (errno.EROFS, errno.EACCES) and "write elsewhere" in str(e.value)
    with pytest.raises(StorageError, match=f"^{read_only_dir}: cannot create the sort buffer") as e:
        TraceWriter(read_only_dir)
    manifest = os.path.join(read_only_dir, MANIFEST)
    with pytest.raises(StorageError, match=f"^{manifest}: cannot write") as e:
        write_json(manifest, {})
    assert os.listdir(read_only_dir) == [] and shard_paths(read_only_dir, "medqa") == []
