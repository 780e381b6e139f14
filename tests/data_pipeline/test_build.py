"""End to end: fixture sources -> fake teacher endpoint -> shards + manifest; sharding, merge, dry run, the CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import grain
import ml_collections
import pytest
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import build_config  # noqa: E402
from fake_openai import FakeOpenAI  # noqa: E402

from data_pipeline import build  # noqa: E402
from data_pipeline.build import RecipeError, run_build  # noqa: E402
from data_pipeline.records import AcceptedTrace  # noqa: E402
from data_pipeline.writer import shard_paths  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LONG = "A 45-year-old man presents to the emergency department with crushing chest pain radiating to the left arm"
N_TEXT, N_MM = 12, 4


def write_sources(root: str) -> dict[str, str]:
    """MedQA train + test (benchmark) jsonl and a PMC-VQA csv with PNG figures; returns key -> answer."""
    answers = {}
    os.makedirs(f"{root}/medqa", exist_ok=True)
    with open(f"{root}/medqa/train.jsonl", "w") as f:
        for i in range(N_TEXT):
            opts = {"A": "aspirin", "B": "heparin", "C": "warfarin", "D": "alteplase", "E": "nothing"}
            idx = "ABCDE"[i % 5]
            q = LONG + " (contaminated)." if i == 2 else f"Case {i}: which drug is indicated now?"
            f.write(json.dumps({"question": q, "options": opts, "answer": opts[idx], "answer_idx": idx}) + "\n")
            answers[f"medqa/train-{i}"] = idx
        f.write("{not json\n")  # a malformed row: counted, nothing else lost
    os.makedirs(f"{root}/benchmarks/medqa", exist_ok=True)
    with open(f"{root}/benchmarks/medqa/test.jsonl", "w") as f:
        opts = {"A": "x", "B": "y"}
        f.write(json.dumps({"question": LONG + " (contaminated).", "options": opts, "answer": "x", "answer_idx": "A"}))
        f.write("\n")
    os.makedirs(f"{root}/pmc_vqa/images", exist_ok=True)
    with open(f"{root}/pmc_vqa/train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"]
        )
        for i in range(N_MM):
            buf = io.BytesIO()
            Image.new("RGB", (8 + i, 8), (i * 40, 10, 200 - i * 30)).save(buf, format="PNG")
            open(f"{root}/pmc_vqa/images/fig{i}.png", "wb").write(buf.getvalue())
            label = "ABCD"[i % 4]
            answers[f"pmc_vqa/v1-train-{i}-fig{i}"] = label  # the id PMC-VQA version 1 rows get
            w.writerow(
                [f"fig{i}.png", f"What modality is figure {i}?", "x", "A:CT", " B:MRI", "C:X-ray", "D:US", label]
            )
        w.writerow(["missing.png", "Where is it?", "x", "A:a", "B:b", "C:c", "D:d", "A"])  # missing image
    return answers


def labels_by_key(root: str) -> dict[str, str]:
    """`Question.key` (a content hash: what the fake teacher sees) -> the fixture's "<source>/<id>"."""
    from data_pipeline.records import Question
    from data_pipeline.sources import read_source

    entries = build_config.get_config().recipe.sources
    return {
        q.key: q.label
        for e in entries.values()
        for q in read_source(e.adapter, os.path.join(root, e.path), split=e.split, **e.options.to_dict())
        if isinstance(q, Question)
    }


def answer_fn(answers: dict[str, str], labels: dict[str, str]):
    def fn(qkey: str, s: int) -> str:
        qkey = labels[qkey]
        truth = answers[qkey]
        if qkey == "medqa/train-5":  # this question is never answered right
            return "ABCDE"[("ABCDE".index(truth) + 1) % 5]
        return truth if s % 4 != 3 else ("B" if truth == "A" else "A")

    return fn


def make_config(root: str, url: str) -> ml_collections.ConfigDict:
    config = build_config.get_config()
    config.recipe.source_root = root
    config.recipe.decontamination.benchmark_dir = f"{root}/benchmarks"
    for c in config.recipe.teachers:
        config.recipe.teachers[c].base_url = url
    return config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sources"))
    answers = write_sources(root)
    fault = lambda q, s, a: "500" if (a == 0 and s.startswith("4")) else "ok"  # noqa: E731
    with FakeOpenAI(answer_fn=answer_fn(answers, labels_by_key(root)), fault_plan=fault) as srv:
        yield root, srv


def read_all(out: str, source: str) -> list[AcceptedTrace]:
    ds = grain.sources.ArrayRecordDataSource(shard_paths(out, source))
    return [AcceptedTrace.from_bytes(ds[i]) for i in range(len(ds))]


def test_build_end_to_end_deterministic_and_resumable(world, tmp_path):
    root, srv = world
    cfg = make_config(root, srv.base_url)
    srv.served.clear()
    a = run_build(cfg, out_dir=str(tmp_path / "a"), progress=False, log=lambda s: None)
    m = a.manifest
    text = m["sources"]["medqa"]["categories"]["text"]
    # 12 questions in; #2 shares a 16-gram with the benchmark; #5 never answered right.
    assert text["questions_in"] == 12
    assert text["dropped"] == {"benchmark_ngram": 1, "no_accepted_trace": 1}
    assert text["questions_kept"] == 10
    # 8 samples, 6 right (s % 4 != 3), distinct texts -> K=4 kept of each kept question.
    assert text["traces_kept"] == 40
    assert text["samples"] == 11 * 8 and text["samples_correct"] == 10 * 6
    assert text["dropped_samples"] == {"over_k": 20, "wrong_answer": 28}
    assert text["response_tokens"] > 40 * 10
    assert m["sources"]["medqa"]["categories"]["unparsed"]["dropped"] == {"malformed_record": 1}
    mm = m["sources"]["pmc_vqa"]["categories"]
    assert mm["mm_reasoning"]["questions_kept"] == N_MM and mm["mm_reasoning"]["traces_kept"] == 4 * N_MM
    assert mm["unparsed"]["dropped"] == {"missing_image": 1}
    assert m["teachers"]["deepseek-r1"]["categories"] == ["text"]
    assert m["teachers"]["gpt-4o"]["categories"] == ["mm_reasoning"]
    assert m["teachers"]["deepseek-r1"]["usage"]["prompt_tokens"] == 100 * 2 * 11  # 2 requests per question
    assert m["seed"] == 0 and m["schema_version"] == 1 and m["recipe"]["traces_per_question"] == 4
    assert all(v == 1 for v in srv.served.values())  # 500s were retried, nothing asked twice

    traces = read_all(str(tmp_path / "a"), "medqa")
    assert len(traces) == 40
    assert all(t.response.startswith("<think>\n") and "\\boxed{" in t.response for t in traces)
    assert all(t.question.answer in t.response.split("boxed{")[-1][:1] for t in traces)
    mmt = read_all(str(tmp_path / "a"), "pmc_vqa")
    assert mmt[0].question.images[0].data.startswith(b"\x89PNG") and mmt[0].teacher == "gpt-4o"

    # Restarted on the same output: everything is in the store, no request goes out.
    srv.served.clear()
    srv.attempts.clear()
    b = run_build(cfg, out_dir=str(tmp_path / "a"), progress=False, log=lambda s: None)
    assert not srv.attempts
    assert b.manifest == m

    # A fresh output (new store, requests again): byte-identical shards.
    c = run_build(cfg, out_dir=str(tmp_path / "c"), progress=False, log=lambda s: None)
    for src in ("medqa", "pmc_vqa"):
        for pa, pc in zip(shard_paths(str(tmp_path / "a"), src), shard_paths(str(tmp_path / "c"), src), strict=True):
            assert open(pa, "rb").read() == open(pc, "rb").read()
    assert c.manifest == m
    assert open(tmp_path / "a" / "manifest.json", "rb").read() == open(tmp_path / "c" / "manifest.json", "rb").read()


def test_sharded_build_and_merge_match_unsharded(world, tmp_path):
    root, srv = world
    cfg = make_config(root, srv.base_url)
    whole = run_build(cfg, out_dir=str(tmp_path / "whole"), progress=False, log=lambda s: None).manifest
    out = str(tmp_path / "sharded")
    for i in range(3):
        run_build(cfg, out_dir=out, num_shards=3, shard_index=i, progress=False, log=lambda s: None)
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    r = subprocess.run(
        [sys.executable, "-m", "data_pipeline.build", "--config=full_mix", f"--out={out}", "--num_shards=3", "--merge"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    merged = json.load(open(os.path.join(out, "manifest.json")))
    assert merged["totals"] == whole["totals"]
    assert merged["sources"]["medqa"]["total"]["traces_kept"] == 40
    assert [f["path"] for f in merged["files"]["medqa"]] == [
        f"medqa/medqa.array_record-0000{i}-of-00003" for i in range(3)
    ]
    key = lambda t: (t.question.key, t.sample_index)  # noqa: E731
    assert sorted(read_all(out, "medqa"), key=key) == read_all(str(tmp_path / "whole"), "medqa")


def test_dry_run_calls_nothing(world, tmp_path):
    root, srv = world
    cfg = make_config(root, srv.base_url)
    srv.attempts.clear()
    res = run_build(cfg, out_dir=str(tmp_path), dry_run=True, progress=False, log=lambda s: None)
    assert not srv.attempts
    assert res.manifest is None and not shard_paths(str(tmp_path), "medqa")
    assert res.dry_run_requests == {"deepseek-r1": 11 * 8, "gpt-4o": N_MM * 8}
    assert "dry run: samples to request" in res.table


def test_filters_and_direct_format(world, tmp_path):
    root, srv = world
    cfg = make_config(root, srv.base_url)
    r = cfg.recipe
    r.filters.teacher_pass_rate.enabled = True
    r.filters.teacher_pass_rate.lo, r.filters.teacher_pass_rate.hi = 1, 8
    r.response_format.text = "direct"
    m = run_build(cfg, out_dir=str(tmp_path), progress=False, log=lambda s: None).manifest
    text = m["sources"]["medqa"]["categories"]["text"]
    assert text["dropped"] == {"benchmark_ngram": 1, "teacher_pass_rate": 1}  # #5 has 0 of 8 correct
    assert text["traces_kept"] == 10  # direct answers dedupe to one per question
    assert {t.response for t in read_all(str(tmp_path), "medqa")} <= {
        f"The answer is \\boxed{{{x}}} ({y})."
        for x, y in zip("ABCDE", ["aspirin", "heparin", "warfarin", "alteplase", "nothing"], strict=True)
    }


def test_missing_source_path_fails_at_once(world, tmp_path):
    root, srv = world
    cfg = make_config(root, srv.base_url)
    cfg.recipe.sources.medqa.path = "nowhere/medqa"
    with pytest.raises(RecipeError, match=r"recipe\.sources\.medqa\.path = 'nowhere/medqa'"):
        run_build(cfg, out_dir=str(tmp_path), progress=False, log=lambda s: None)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_pipeline.build",
            "--config=full_mix",
            f"--source_root={tmp_path}",
            f"--out={tmp_path}",
            "--dry_run",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "recipe.sources.aptos.path" in r.stderr and str(tmp_path) in r.stderr


def test_judge_and_student_filters(world, tmp_path):
    root, srv = world
    labels = labels_by_key(root)
    srv.judge_fn = lambda q: int(labels[q].split("-")[1]) % 10 + 1 if q.startswith("medqa") else 4
    cfg = make_config(root, srv.base_url)
    f = cfg.recipe.filters
    f.judge.enabled = True
    f.judge.endpoint.base_url = srv.base_url
    f.judge.endpoint.api_key_env = ""
    f.student_pass_rate.enabled = True
    f.student_pass_rate.lo, f.student_pass_rate.hi, f.student_pass_rate.n = 1, 8, 8
    f.student_pass_rate.endpoint.base_url = srv.base_url
    m = run_build(cfg, out_dir=str(tmp_path), progress=False, log=lambda s: None).manifest
    text = m["sources"]["medqa"]["categories"]["text"]
    # Judge scores i % 10 + 1 for medqa/train-i: of the 11 judged (2 is decontaminated), 3..6 keeps 3, 4, 5;
    # the student never solves #5 -> dropped by the student filter.
    assert text["dropped"] == {"benchmark_ngram": 1, "judge_difficulty": 8, "student_pass_rate": 1}
    assert text["questions_kept"] == 2
    assert m["sources"]["pmc_vqa"]["categories"]["mm_reasoning"]["questions_kept"] == N_MM
    assert set(m["teachers"]) == {"deepseek-r1", "gpt-4o", "judge-gpt-4o", "student-qwen2.5-vl-7b"}
    assert m["teachers"]["judge-gpt-4o"]["prompt_version"] == "judge-v1"


def test_cli_builds_with_config_overrides(world, tmp_path):
    """`--config=FILE --config.x.y=v` as for train: the overrides reach the build (here K 4 -> 2)."""
    root, srv = world
    out = tmp_path / "k2"
    build.main([
        "build",
        f"--config={HERE}/build_config.py",
        f"--config.recipe.source_root={root}",
        f"--config.recipe.decontamination.benchmark_dir={root}/benchmarks",
        f"--config.recipe.teachers.text.base_url={srv.base_url}",
        f"--config.recipe.teachers.mm_reasoning.base_url={srv.base_url}",
        "--config.recipe.traces_per_question=2",
        f"--out={out}",
        "--no_progress",
    ])
    m = json.load(open(out / "manifest.json"))
    assert m["recipe"]["traces_per_question"] == 2 and m["recipe"]["source_root"] == root
    text = m["sources"]["medqa"]["categories"]["text"]
    # The same questions and samples as at K=4 (10 kept, 6 of 8 right), but 2 traces kept of each, not 4.
    assert text["questions_kept"] == 10 and text["traces_kept"] == 10 * 2
    assert text["dropped_samples"] == {"over_k": 10 * 4, "wrong_answer": 28}
    assert m["sources"]["pmc_vqa"]["categories"]["mm_reasoning"]["traces_kept"] == 2 * N_MM
    assert len(read_all(str(out), "medqa")) == 20


def test_cli_rejects_a_bad_override_naming_it(tmp_path):
    with pytest.raises(SystemExit, match=r"recipe\.traces_per_question = 0: want at least 1"):
        build.main(["build", f"--config={HERE}/build_config.py", "--config.recipe.traces_per_question=0",
                    f"--out={tmp_path}"])
    with pytest.raises(SystemExit, match=r"does not exist: 'traces_per_questoin'"):
        build.main(["build", f"--config={HERE}/build_config.py", "--config.recipe.traces_per_questoin=2"])
    with pytest.raises(SystemExit, match=r"unknown config 'no_such_recipe'.*full_mix"):
        build.main(["build", "--config=no_such_recipe"])


def test_config_names_resolve_as_for_train():
    from configs.cli import CONFIGS_DIR, ConfigNameError, known_configs, resolve_config_argument

    assert {"base", "demo", "full_mix", "traces_4"} <= set(known_configs()) and "cli" not in known_configs()
    full_mix = os.path.join(CONFIGS_DIR, "full_mix.py")
    assert resolve_config_argument(["p", "--config=full_mix:arg", "--config.seed=1"]) == [
        "p", f"--config={full_mix}:arg", "--config.seed=1"]
    assert resolve_config_argument(["p", "--config", "full_mix"]) == ["p", "--config", full_mix]
    assert resolve_config_argument(["p", "--config=x/y.py"], default="demo") == ["p", "--config=x/y.py"]
    assert resolve_config_argument(["p", "--x=1"], default="demo") == [
        "p", f"--config={os.path.join(CONFIGS_DIR, 'demo.py')}", "--x=1"]
    with pytest.raises(ConfigNameError, match=r"unknown config 'ful_mix'.*full_mix"):
        resolve_config_argument(["p", "--config=ful_mix"])
