"""ArrayRecord shards: readable by Grain, sorted, byte-identical across runs; manifests and their merge."""

from __future__ import annotations

import hashlib
import json
import os
import random

import grain
import pytest

from data_pipeline.records import AcceptedTrace, ImageRef, Question
from data_pipeline.writer import (
    ManifestStats,
    TraceWriter,
    build_manifest,
    count_tokens,
    merge_manifests,
    partial_manifest_path,
    shard_paths,
    write_json,
)


def traces(n_q: int, k: int, source: str = "medqa") -> list[AcceptedTrace]:
    out = []
    for i in range(n_q):
        q = Question(
            id=f"{i:04d}",
            source=source,
            category="mm_reasoning" if i % 2 else "text",
            question=f"Q{i}?",
            options={"A": "x", "B": "y"},
            answer="A",
            images=(ImageRef(data=bytes([i % 256]) * 10, format="png"),) if i % 2 else (),
        )
        for s in range(k):
            out.append(AcceptedTrace(q, f"<think>\nr{i}-{s}\n</think>\n\nThe answer is A", "cot", "r1", s))
    return out


def write(out: str, items: list[AcceptedTrace], **kw) -> dict:
    with TraceWriter(out, batch=7, **kw) as w:
        for t in items:
            w.add(t)
    return w.files


def test_shards_readable_sorted_and_deterministic(tmp_path):
    items = traces(30, 3) + traces(5, 2, source="pmc_vqa")
    shuffled = items[:]
    random.Random(0).shuffle(shuffled)
    files_a = write(str(tmp_path / "a"), shuffled, files_per_source=3)
    random.Random(1).shuffle(shuffled)
    write(str(tmp_path / "b"), shuffled, files_per_source=3)

    paths = shard_paths(str(tmp_path / "a"), "medqa")
    assert [os.path.basename(p) for p in paths] == [f"medqa.array_record-0000{i}-of-00003" for i in range(3)]
    assert [f.records for f in files_a["medqa"]] == [30, 30, 30]
    for f in files_a["medqa"]:  # size and checksum of the bytes on disk, for the manifest
        data = open(f.path, "rb").read()
        assert (f.size, f.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    ds = grain.sources.ArrayRecordDataSource(paths)
    assert len(ds) == 90
    got = [AcceptedTrace.from_bytes(ds[i]) for i in range(len(ds))]
    keys = [(t.question.key, t.sample_index) for t in got]
    assert keys == sorted(keys)  # arrival order does not matter
    assert got == sorted(
        (t for t in items if t.question.source == "medqa"), key=lambda t: (t.question.key, t.sample_index)
    )
    assert next(t for t in got if t.question.id == "0001").question.images[0].data == bytes([1]) * 10
    # Byte-identical across runs with other arrival orders.
    for src in ("medqa", "pmc_vqa"):
        for pa, pb in zip(shard_paths(str(tmp_path / "a"), src), shard_paths(str(tmp_path / "b"), src), strict=True):
            assert open(pa, "rb").read() == open(pb, "rb").read()
    assert len(grain.sources.ArrayRecordDataSource(shard_paths(str(tmp_path / "a"), "pmc_vqa"))) == 10
    assert not [f for f in os.listdir(tmp_path / "a") if f.startswith(".sort")]  # sort buffer removed


def test_duplicate_add_stored_once_and_empty_source(tmp_path):
    items = traces(3, 2)
    with TraceWriter(str(tmp_path)) as w:
        w.declare_source("empty_src")
        for t in items + items:
            w.add(t)
    assert w.files["medqa"][0].records == 6
    ds = grain.sources.ArrayRecordDataSource(shard_paths(str(tmp_path), "empty_src"))
    assert len(ds) == 0


def test_sharded_jobs_and_merge(tmp_path):
    out = str(tmp_path)
    items = traces(20, 2)
    parts = [items[: len(items) // 2], items[len(items) // 2 :]]
    for i, part in enumerate(parts):
        files = write(out, part, shard_index=i, num_shards=2)
        stats = ManifestStats()
        for t in part:
            s = stats[("medqa", t.question.category)]
            s.traces_kept += 1
            s.samples += 4
            s.samples_correct += 1
        stats[("medqa", "text")].dropped["benchmark_ngram"] += i + 1
        m = build_manifest(
            recipe_name="r",
            recipe={"seed": 0},
            seed=0,
            stats=stats,
            files=files,
            out_dir=out,
            teachers={"r1": {"model": "m", "usage": {"prompt_tokens": 10 + i, "cost_usd": 0.5}}},
            shard_index=i,
            num_shards=2,
        )
        write_json(partial_manifest_path(out, i, 2), m)
    merged = merge_manifests(out)
    on_disk = json.load(open(os.path.join(out, "manifest.json")))
    assert merged == on_disk
    assert [f["path"] for f in merged["files"]["medqa"]] == [
        "medqa/medqa.array_record-00000-of-00002",
        "medqa/medqa.array_record-00001-of-00002",
    ]
    assert merged["totals"]["traces_kept"] == 40 and merged["totals"]["acceptance_rate"] == 0.25
    assert merged["sources"]["medqa"]["categories"]["text"]["dropped"] == {"benchmark_ngram": 3}
    assert merged["teachers"]["r1"]["usage"] == {"prompt_tokens": 21, "cost_usd": 1.0}
    assert merged["teachers"]["r1"]["model"] == "m"
    ds = grain.sources.ArrayRecordDataSource(shard_paths(out, "medqa"))
    assert len(ds) == 40
    os.remove(partial_manifest_path(out, 1, 2))
    with pytest.raises(FileNotFoundError, match=r"shard\(s\) \[1\]"):
        merge_manifests(out)


def test_count_tokens_uses_qwen_tokenizer():
    from data_pipeline.writer import qwen_tokenizer

    tok = qwen_tokenizer()
    assert tok.token_to_id("<think>") == 151667 and tok.token_to_id("<|im_end|>") == 151645
    assert count_tokens(["<think>\nhi\n</think>"]) == len(
        tok.encode("<think>\nhi\n</think>", add_special_tokens=False).ids
    )
    assert count_tokens(["hello world", "hello world"]) == 2 * count_tokens(["hello world"]) == 4
