"""The Beam build (data_pipeline/beam_build.py) against the in-process build: byte-identical shards and manifest,
dedup and decontamination across workers, a killed run resumed without paying twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import ml_collections
import pytest

pytest.importorskip("apache_beam")  # the `beam` extra; CI installs it with `test`

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from fake_openai import FakeOpenAI  # noqa: E402
from test_build import LONG, answer_fn, labels_by_key, make_config, write_sources  # noqa: E402

from data_pipeline.beam_build import run_beam_build  # noqa: E402
from data_pipeline.build import run_build  # noqa: E402
from data_pipeline.store import CompletionStore  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
MP = "--direct_num_workers=2 --direct_running_mode=multi_processing"


def write_copy_source(root: str) -> None:
    """A third source, read by its own ReadSources element: MedQA's question 0 twice (a copy within the source,
    then a duplicate of another source's question) and a question contaminated by the benchmark."""
    os.makedirs(f"{root}/medqa_copy", exist_ok=True)
    opts = {"A": "aspirin", "B": "heparin", "C": "warfarin", "D": "alteplase", "E": "nothing"}
    rows = [("Case 0: which drug is indicated now?", "A")] * 2 + [(LONG + " (contaminated).", "B")]
    with open(f"{root}/medqa_copy/train.jsonl", "w") as f:
        for q, idx in rows:
            f.write(json.dumps({"question": q, "options": opts, "answer": opts[idx], "answer_idx": idx}) + "\n")


def with_copy_source(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    entry = ml_collections.ConfigDict(config.recipe.sources.medqa.to_dict())
    entry.path = "medqa_copy"
    config.recipe.sources.medqa_copy = entry
    return config


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One world, built in process and by the DirectRunner with 2 worker processes."""
    root = str(tmp_path_factory.mktemp("sources"))
    answers = write_sources(root)
    write_copy_source(root)
    out = tmp_path_factory.mktemp("out")
    with FakeOpenAI(answer_fn=answer_fn(answers, labels_by_key(root))) as srv:
        cfg = with_copy_source(make_config(root, srv.base_url))
        local = run_build(cfg, out_dir=str(out / "local"), progress=False, log=lambda s: None)
        srv.served.clear()
        beam = run_beam_build(cfg, out_dir=str(out / "beam"), beam_args=MP, log_fn=lambda s: None)
        served = dict(srv.served)
    yield root, answers, out, local, beam, served


def test_beam_output_is_byte_identical_to_the_in_process_build(built):
    _, _, out, local, beam, served = built
    assert beam.manifest == local.manifest
    names = ("manifest.json", *(f["path"] for fl in local.manifest["files"].values() for f in fl))
    assert len(names) == 4  # one shard per source (medqa_copy's is empty), no field excluded
    for name in names:
        assert open(out / "local" / name, "rb").read() == open(out / "beam" / name, "rb").read(), name
    assert len(served) == 15 * 8 and set(served.values()) == {1}  # 11 + 4 questions sampled, each sample once


def test_copies_duplicates_and_contamination_across_sources_removed_once(built):
    m = built[4].manifest
    copy = m["sources"]["medqa_copy"]["categories"]["text"]
    assert copy["questions_in"] == 3 and copy["questions_kept"] == 0
    assert copy["dropped"] == {"benchmark_ngram": 1, "duplicate_exact": 1, "duplicate_question": 1}
    assert m["sources"]["medqa"]["categories"]["text"]["dropped"] == {"benchmark_ngram": 1, "no_accepted_trace": 1}
    d = m["decontamination"]
    assert d["duplicate_exact"] == 1 and d["removed"]["medqa"] == {"ngram": 2, "image_exact": 0, "image_near": 0}
    assert m["files"]["medqa_copy"][0]["records"] == 0


def test_near_duplicates_removed_in_build_order_as_in_process(tmp_path):
    """A near copy of the first question (its first word changed) and an exact twin of that copy (upper case):
    in build order both are near duplicates of the first (the twin's exact match was itself dropped), the
    in-process decisions that only a global step in build order reproduces."""
    stem = LONG + " and sweating for an hour after climbing the stairs at home; which drug is indicated now?"
    near = "One" + stem[1:]
    opts = {"A": "aspirin", "B": "heparin", "C": "warfarin", "D": "alteplase", "E": "nothing"}
    os.makedirs(tmp_path / "src/medqa")
    with open(tmp_path / "src/medqa/train.jsonl", "w") as f:
        for q in (stem, near, near.upper(), "Case 9: which drug is indicated now?"):
            f.write(json.dumps({"question": q, "options": opts, "answer": "aspirin", "answer_idx": "A"}) + "\n")
    with FakeOpenAI(answer_fn=lambda qkey, s: "A") as srv:
        cfg = make_config(str(tmp_path / "src"), srv.base_url)
        cfg.recipe.sources = ml_collections.ConfigDict({"medqa": cfg.recipe.sources.medqa.to_dict()})
        cfg.recipe.decontamination.near_jaccard = 0.8
        local = run_build(cfg, out_dir=str(tmp_path / "local"), progress=False, log=lambda s: None)
        srv.served.clear()
        beam = run_beam_build(cfg, out_dir=str(tmp_path / "beam"), log_fn=lambda s: None,
                              beam_args="--direct_num_workers=2 --direct_running_mode=multi_threading")
        served = dict(srv.served)
    assert beam.manifest == local.manifest
    for name in ("manifest.json", "medqa/medqa.array_record-00000-of-00001"):
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "beam" / name).read_bytes(), name
    d, text = beam.manifest["decontamination"], beam.manifest["sources"]["medqa"]["categories"]["text"]
    assert (d["near_duplicate"], d["duplicate_exact"]) == (2, 0)
    assert text["questions_in"] == 4 and text["questions_kept"] == 2 and text["dropped"] == {"duplicate_near": 2}
    assert len(served) == 2 * 8 and set(served.values()) == {1}  # duplicates dropped before sampling


def test_killed_run_then_rerun_requests_no_completion_twice(built, tmp_path):
    """The CLI on the DirectRunner, SIGKILLed mid-sampling (driver and workers), then run again on the same store."""
    root, answers, out, *_ = built
    dest = tmp_path / "beam"
    with FakeOpenAI(answer_fn=answer_fn(answers, labels_by_key(root)), delay_s=0.1) as srv:
        cmd = [
            sys.executable, "-m", "data_pipeline.build", f"--config={HERE}/build_config.py",
            f"--config.recipe.source_root={root}", f"--config.recipe.decontamination.benchmark_dir={root}/benchmarks",
            f"--config.recipe.teachers.text.base_url={srv.base_url}",
            f"--config.recipe.teachers.mm_reasoning.base_url={srv.base_url}",
            f"--out={dest}", "--runner=DirectRunner",
            "--beam_args=--direct_num_workers=2 --direct_running_mode=multi_threading",
        ]
        proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while sum(srv.served.values()) < 40 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.005)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        srv.wait_idle()  # requests the killed run left behind must not count as the rerun's
        first = dict(srv.served)
        store = CompletionStore(str(dest / "completions.sqlite"))
        stored = {(c.question_key, c.sample_index) for c in store.iter_all()}
        store.close()
        assert 0 < len(stored) < 15 * 8 and stored <= set(first)
        assert not (dest / "manifest.json").exists()
        srv.served.clear()
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    local = CompletionStore(str(out / "local" / "completions.sqlite"))
    everything = {(c.question_key, c.sample_index) for c in local.iter_all()}
    local.close()
    assert len(everything) == 15 * 8
    assert set(srv.served) == everything - stored and set(srv.served.values()) == {1}
    for src in ("medqa", "pmc_vqa"):  # the same shards as the uninterrupted in-process build
        name = f"{src}/{src}.array_record-00000-of-00001"
        assert open(dest / name, "rb").read() == open(out / "local" / name, "rb").read()


def test_tfds_dataset_of_the_build_reads_back_without_tensorflow(built, tmp_path):
    import grain
    import tensorflow_datasets as tfds

    from data_pipeline.tfds_dataset import prepare

    out = built[2] / "beam"
    builder = prepare(str(out), str(tmp_path))
    assert {s: v.num_examples for s, v in builder.info.splits.items()} == {"medqa": 40, "pmc_vqa": 16}
    ds = tfds.data_source("octomed_recipe/test_recipe", data_dir=str(tmp_path), split="medqa")
    shard = grain.sources.ArrayRecordDataSource([str(out / "medqa/medqa.array_record-00000-of-00001")])
    assert sorted(ds[i]["trace"] for i in range(len(ds))) == sorted(shard[i] for i in range(len(shard)))
    again = tfds.builder_from_directory(builder.data_dir).as_data_source()["pmc_vqa"]
    assert len(again) == 16 and {again[i]["teacher"] for i in range(16)} == {b"gpt-4o"}  # Text: bytes without TF
    assert "tensorflow" not in sys.modules


def test_dedup_exact_alone_keeps_the_first_in_build_order(built):
    """One transform on its own: whatever order a group arrives in, the smallest ordinal is kept."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from data_pipeline.beam_build import DUPLICATES, TALLY, DedupExact
    from data_pipeline.records import Question

    cfg = with_copy_source(make_config(built[0], "http://127.0.0.1:9/v1")).to_dict()
    q = {"question": Question(id="x", source="medqa", category="text", question="Same?", options={"A": "a", "B": "b"},
                              answer="A").to_dict()}
    group = [((1, 5), "medqa_copy", q), ((0, 7), "medqa", q), ((1, 0), "medqa_copy", q)]
    with TestPipeline() as p:
        out = p | beam.Create([(b"k", group)]) | beam.ParDo(DedupExact(cfg, built[0])).with_outputs(
            TALLY, DUPLICATES, main="kept"
        )
        assert_that(out.kept, equal_to([group[1]]), label="kept")
        assert_that(out[DUPLICATES], equal_to([("duplicate_exact", 2)]), label="duplicates")
        dropped = out[TALLY] | beam.Map(lambda d: d["stats"]["medqa_copy"]["total"]["dropped"])
        assert_that(dropped, equal_to([{"duplicate_exact": 2}]), label="tally")
