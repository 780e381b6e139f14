"""Training reads exactly the shards manifest.json lists, checked by size and SHA-256; every file fault names
the file: a leftover .tmp, a rebuild with fewer files, a deleted or changed shard, a damaged iterator state."""

from __future__ import annotations

import glob
import json
import logging
import os
import sys

import orbax.checkpoint as ocp
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import packed_data_util as u  # noqa: E402

from data_pipeline.storage import ManifestError, StorageError  # noqa: E402
from data_pipeline.writer import MANIFEST, shard_paths, write_dataset  # noqa: E402
from octomed_jax.data import built_sources, checkpointing, host_examples, make_iterator  # noqa: E402

N = 10


def build(data_dir: str, files_per_source: int = 2) -> list[str]:
    """N text traces of source 'text_src' as `files_per_source` shards + manifest; returns the shard paths."""
    write_dataset(
        data_dir, [u.make_trace("text_src", i, reasoning_words=8) for i in range(N)], files_per_source=files_per_source
    )
    return shard_paths(data_dir, "text_src")


def config(data_dir: str, **overrides):
    return u.data_config(data_dir, sources={"text_src": 1.0}, epochs=1, batch_size=1, **overrides)


def stream(data_dir: str, **overrides):
    return host_examples(config(data_dir, **overrides), u.MODEL_CFG, 0, 1)


def test_listed_shards_are_read_and_checked(tmp_path):
    paths = build(str(tmp_path))
    entries = json.load(open(tmp_path / MANIFEST))["files"]["text_src"]
    assert [os.path.join(str(tmp_path), e["path"]) for e in entries] == paths
    assert [e["bytes"] for e in entries] == [os.path.getsize(p) for p in paths]
    assert all(len(e["sha256"]) == 64 for e in entries)
    assert len(stream(str(tmp_path))) == N


def test_leftover_tmp_shard_is_an_error_naming_it(tmp_path):
    paths = build(str(tmp_path))
    leftover = paths[0] + ".tmp"
    open(leftover, "wb").write(b"half a shard")
    with pytest.raises(ManifestError) as e:
        stream(str(tmp_path))
    assert f"{leftover}: not listed in the manifest (a partial shard left by an interrupted write)" in str(e.value)
    assert "python -m data_pipeline.build" in str(e.value)


def test_rebuild_with_fewer_files_leaves_only_the_listed_shards(tmp_path):
    old = build(str(tmp_path), files_per_source=3)
    new = build(str(tmp_path), files_per_source=1)
    assert len(old) == 3 and [os.path.basename(p) for p in new] == ["text_src.array_record-00000-of-00001"]
    assert len(stream(str(tmp_path))) == N  # not 2 * N: the 3 old shards are gone
    assert built_sources(str(tmp_path)) == {"text_src": 1.0}
    # An old shard put back (e.g. by a copy tool) is not read silently.
    open(old[1], "wb").write(b"old")
    with pytest.raises(ManifestError, match=f"{old[1]}: not listed in the manifest"):
        stream(str(tmp_path))


def test_deleted_shard_is_an_error_naming_it(tmp_path):
    paths = build(str(tmp_path))
    os.remove(paths[1])
    with pytest.raises(ManifestError, match=f"{paths[1]}: listed in the manifest but missing"):
        stream(str(tmp_path))


def test_changed_bytes_fail_the_checksum_and_name_the_shard_when_read(tmp_path):
    paths = build(str(tmp_path), files_per_source=1)
    data = bytearray(open(paths[0], "rb").read())
    data[500] ^= 0xFF  # same size, other bytes: in the records' first chunk (the file is padded to 64 KiB)
    open(paths[0], "wb").write(bytes(data))
    with pytest.raises(ManifestError, match=f"{paths[0]}: SHA-256 .* the manifest says"):
        stream(str(tmp_path))
    # Sizes only: the start passes, and the damaged record's read error (Riegeli's) names the shard.
    ds = stream(str(tmp_path), verify_files="size")
    with pytest.raises(StorageError, match=f"{paths[0]}: cannot read record .* of the shard: .*Corrupted"):
        [ds[i] for i in range(len(ds))]


def test_manifest_without_checksums_warns_and_still_checks_counts(tmp_path, caplog):
    paths = build(str(tmp_path))
    manifest = json.load(open(tmp_path / MANIFEST))
    for e in manifest["files"]["text_src"]:  # as written before sizes and checksums were recorded
        del e["bytes"], e["sha256"]
    json.dump(manifest, open(tmp_path / MANIFEST, "w"))
    with caplog.at_level(logging.WARNING):
        assert len(stream(str(tmp_path))) == N
    assert "records no sizes or checksums" in caplog.text and str(tmp_path / MANIFEST) in caplog.text
    manifest["files"]["text_src"][0]["records"] += 1
    json.dump(manifest, open(tmp_path / MANIFEST, "w"))
    with pytest.raises(ManifestError, match=f"{paths[0]}: {N // 2} records, the manifest says {N // 2 + 1}"):
        stream(str(tmp_path))


def test_missing_or_damaged_manifest_names_it(tmp_path):
    build(str(tmp_path))
    path = str(tmp_path / MANIFEST)
    open(path, "w").write('{"files": ')
    with pytest.raises(ManifestError, match=f"{path}: the manifest is not valid JSON"):
        stream(str(tmp_path))
    os.remove(path)
    with pytest.raises(ManifestError, match=f"{path}: no manifest there"):
        stream(str(tmp_path))


def test_damaged_iterator_state_in_a_checkpoint_names_the_file(tmp_path):
    build(str(tmp_path / "data"))
    it = make_iterator(config(str(tmp_path / "data")), u.MODEL_CFG, process_index=0, process_count=1)
    next(it)
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as manager:
        checkpointing.save(manager, 1, it)
    (state_file,) = glob.glob(str(tmp_path / "ckpt" / "1" / "data" / "process_*.json"))
    fresh = make_iterator(config(str(tmp_path / "data")), u.MODEL_CFG, process_index=0, process_count=1)
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as manager:
        checkpointing.restore(manager, fresh)  # intact: restores
        assert fresh.get_state()["next_index"] == it.get_state()["next_index"]
    open(state_file, "w").write('{"version": 1, "next_')
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as manager, pytest.raises(checkpointing.DataStateError) as e:
        checkpointing.restore(manager, fresh)
    assert str(e.value).startswith(f"{state_file}: the data-iterator state is not valid JSON")
    assert f"delete the step folder {tmp_path / 'ckpt' / '1'}" in str(e.value)
