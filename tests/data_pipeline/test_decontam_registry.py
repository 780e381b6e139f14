"""Decontamination against every benchmark of the registry, counted per benchmark in a real (tiny) build."""

from __future__ import annotations

import json
import os
import sys

import ml_collections
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import imgutil  # noqa: E402
from fake_openai import FakeOpenAI  # noqa: E402

from configs import full_mix  # noqa: E402
from data_pipeline.benchmarks import BENCHMARKS  # noqa: E402
from data_pipeline.build import RecipeError, run_build  # noqa: E402
from data_pipeline.decontam import DecontamConfig, from_registry  # noqa: E402
from data_pipeline.records import ImageRef, Question  # noqa: E402
from data_pipeline.writer import merge_manifests  # noqa: E402

SHARED = (
    "A 61-year-old woman with long-standing type 2 diabetes reports blurred vision in both eyes for three "
    "months and fundoscopy shows scattered microaneurysms"
)
OPTS = {"A": "Laser", "B": "Anti-VEGF", "C": "Observation", "D": "Vitrectomy", "E": "Steroids"}
PRESENT = ("medqa", "aptos")  # the benchmarks given; every other one of the registry is missing


def _write(path: str, data: bytes | str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def _medqa_row(stem: str) -> str:
    return json.dumps({"question": stem, "options": OPTS, "answer": "Laser", "answer_idx": "A"}) + "\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[str, str]:
    """Training MedQA (#1 shares a 16-gram with the MedQA test set) and APTOS (one image is an APTOS test
    image); benchmarks: MedQA and APTOS only (and an empty NEJM folder)."""
    top = str(tmp_path_factory.mktemp("decontam_registry"))
    src, bench = f"{top}/sources", f"{top}/benchmarks"
    stems = ["Which drug lowers potassium fastest?", SHARED + " around the macula. Next step?", "Which nerve?"]
    _write(f"{src}/medqa/train.jsonl", "".join(_medqa_row(s) for s in stems))
    _write(f"{bench}/medqa/test.jsonl", _medqa_row("Unrelated opening words. " + SHARED + " only."))
    _write(f"{src}/aptos/train.csv", "id_code,diagnosis\nleak,2\nown,0\n")
    _write(f"{bench}/aptos/test.csv", "id_code,diagnosis\nt1,2\nt2,4\n")
    _write(f"{src}/aptos/train_images/leak.png", imgutil.png(seed=1))  # the same file as test image t1
    _write(f"{src}/aptos/train_images/own.png", imgutil.png(seed=2))
    _write(f"{bench}/aptos/test_images/t1.png", imgutil.png(seed=1))
    _write(f"{bench}/aptos/test_images/t2.png", imgutil.png(seed=3))
    os.makedirs(f"{bench}/nejm")  # a folder without the test file: not checked either
    return src, bench


def _config(src: str, bench: str, url: str) -> ml_collections.ConfigDict:
    config = full_mix.get_config()
    r = config.recipe
    r.source_root, r.decontamination.benchmark_dir = src, bench
    r.sources = ml_collections.ConfigDict({k: full_mix.all_sources()[k] for k in ("medqa", "aptos")})
    for c in r.teachers:
        t = r.teachers[c]
        t.base_url, t.api_key_env, t.max_n_per_request, t.n = url, "", 2, 2
    r.traces_per_question = 1
    return config


@pytest.fixture(scope="module")
def built(world, tmp_path_factory):
    src, bench = world
    lines: list[str] = []
    with FakeOpenAI(answer_fn=lambda q, s: "A") as srv:
        out = str(tmp_path_factory.mktemp("out"))
        result = run_build(_config(src, bench, srv.base_url), out_dir=out, progress=False, log=lines.append)
    return result, lines


def test_a_build_removes_and_counts_per_benchmark(built):
    result, _ = built
    m = result.manifest
    d = m["decontamination"]
    assert d["removed"]["medqa"] == {"ngram": 1, "image_exact": 0, "image_near": 0}
    assert d["removed"]["aptos"] == {"ngram": 0, "image_exact": 1, "image_near": 0}
    assert sum(sum(r.values()) for r in d["removed"].values()) == 2
    assert d["benchmarks"]["medqa"] == {"questions": 1, "images": 0, "checked": True}
    assert d["benchmarks"]["aptos"] == {"questions": 2, "images": 2, "checked": True}
    assert m["sources"]["medqa"]["categories"]["text"]["dropped"].get("benchmark_ngram") == 1
    aptos = m["sources"]["aptos"]["categories"]["mm_classification"]
    assert aptos["questions_in"] == 2 and aptos["dropped"].get("benchmark_image_exact") == 1
    # The paper's method by default: no perceptual or near-duplicate extra ran.
    assert d["method"]["image_hamming"] is None and d["method"]["near_jaccard"] is None
    assert d["near_duplicate"] == 0 and d["duplicate_exact"] == 0
    assert "aptos                      2       2       0            1           0" in result.table


def test_a_sharded_build_merges_the_counts(built, world, tmp_path):
    src, bench = world
    out = str(tmp_path / "out")
    with FakeOpenAI(answer_fn=lambda q, s: "A") as srv:
        for i in range(2):
            run_build(_config(src, bench, srv.base_url), out_dir=out, num_shards=2, shard_index=i, progress=False,
                      log=lambda s: None)
    merged = merge_manifests(out)["decontamination"]
    assert merged == built[0].manifest["decontamination"]  # the same counts as the one-job build


def test_the_registry_is_the_list_and_missing_benchmarks_are_warned_and_recorded(built, world):
    result, lines = built
    d = result.manifest["decontamination"]
    assert full_mix.get_config().recipe.decontamination.benchmarks == "all"
    assert sorted(d["benchmarks"]) == sorted(BENCHMARKS) and len(BENCHMARKS) == 14
    missing = sorted(set(BENCHMARKS) - set(PRESENT))
    assert sorted(n for n, b in d["benchmarks"].items() if not b["checked"]) == missing
    where = os.path.join(world[1], "mmmu_pro")
    assert d["benchmarks"]["mmmu_pro_health"] == {
        "questions": 0, "images": 0, "checked": False, "path": where, "error": f"{where} does not exist"
    }
    warned = [line for line in lines if line.startswith("decontamination: benchmark ")]
    assert len(warned) == len(missing) and all("\n" not in w for w in warned)
    assert any("'brain_tumor' NOT checked" in w and "brain_tumor/Testing does not exist" in w for w in warned)
    assert d["benchmarks"]["nejm"]["error"].startswith("no .jsonl/.json file for split 'test' under ")
    assert result.table.count("NOT CHECKED") == len(missing)


def test_require_all_benchmarks_fails_naming_the_first_missing(world):
    src, bench = world
    config = _config(src, bench, "http://127.0.0.1:9/v1")
    config.recipe.decontamination.require_all_benchmarks = True
    with pytest.raises(RecipeError, match=r"benchmark 'headqa'.*require_all_benchmarks=False"):
        run_build(config, out_dir=os.path.join(bench, "never"), dry_run=True, progress=False, log=lambda s: None)


def test_extras_are_off_by_default_and_counted_apart_when_on(world):
    """A brightened copy of an APTOS test image and a near copy of a kept training question: kept by
    default; with the extras on, each counted under its own key."""
    _, bench = world
    arr = imgutil.pattern(32, 48, seed=1)  # the pixels of test image t1
    brighter = imgutil.encode(np.clip(arr.astype(np.int16) + 12, 0, 255).astype(np.uint8))
    stem = "A 30-year-old man has had fever, night sweats and weight loss for two months with painless neck nodes"

    def questions() -> list[Question]:
        image = Question(id="img", source="s", category="mm_classification", question="Which grade?",
                         options={"A": "x", "B": "y"}, answer="A", images=(ImageRef(data=brighter, format="png"),))
        text = [Question(id=str(i), source="s", category="text", question=stem + ending, options=OPTS, answer="A")
                for i, ending in enumerate((". Next test?", ". Best next test?"))]
        return [image, *text]

    default = from_registry(PRESENT, bench, warn=lambda s: None)
    assert [q.id for q in default.filter(questions())] == ["img", "0", "1"]
    extras = from_registry(PRESENT, bench, DecontamConfig(image_hamming=6, near_jaccard=0.7), warn=lambda s: None)
    assert [q.id for q in extras.filter(questions())] == ["0"]
    report = extras.report()
    assert report["removed"]["aptos"] == {"ngram": 0, "image_exact": 0, "image_near": 1}
    assert report["near_duplicate"] == 1 and report["duplicate_exact"] == 0
    assert sorted(report["benchmarks"]) == sorted(PRESENT)
