"""Per source and input file: rows read, questions, rejections and skips by reason, and the files not read.

Fixtures in the releases' layouts: MedMCQA as its archive unpacks (`train.json`, `dev.json`, `test.json`, JSON
lines despite the suffix) and the Hugging Face copy of MMLU-Pro (`data/<split>-00000-of-00001.parquet`, a
README and `.gitattributes`). The build's manifest, its printed table (dry run and real, fake teacher), a
sharded build's merge, and the report of an adapter that drops rows are checked against exact numbers.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import ml_collections
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from fake_openai import FakeOpenAI  # noqa: E402

from configs import base as config_base  # noqa: E402
from configs import full_mix  # noqa: E402
from data_pipeline.build import file_table, run_build  # noqa: E402
from data_pipeline.build import main as build_main  # noqa: E402
from data_pipeline.records import Question  # noqa: E402
from data_pipeline.sources.base import (  # noqa: E402
    UNACCOUNTED,
    Rejected,
    ReportedRead,
    find_files,
    iter_rows,
    read_json_any,
    run_rows,
)
from data_pipeline.writer import merge_manifests  # noqa: E402


def medmcqa_row(i: int, cop: int) -> dict:
    return {
        "id": f"e9ad821a-c438-4965-9f77-760819dfa15{i}",
        "question": f"Chronic urethral obstruction due to benign prostatic hyperplasia can lead to change {i}:",
        "opa": "Hyperplasia",
        "opb": "Hyperophy",
        "opc": "Atrophy",
        "opd": "Dyplasia",
        "cop": cop,
        "choice_type": "single",
        "exp": "Chronic urethral obstruction leads to atrophy of the kidney.",
        "subject_name": "Anatomy",
        "topic_name": "Urinary tract",
    }


def mmlu_row(i: int, category: str, answer: str = "B", answer_index: int = 1) -> dict:
    return {
        "question_id": 7000 + i,
        "question": f"Which of the following is the most common cause of community-acquired pneumonia ({i})?",
        "options": ["Haemophilus influenzae", "Streptococcus pneumoniae", "Legionella", "Mycoplasma", "N/A"],
        "answer": answer,
        "answer_index": answer_index,
        "cot_content": "",
        "category": category,
        "src": f"ori_mmlu-clinical_knowledge-{i}",
    }


def write_sources(root: Path) -> None:
    """MedMCQA train: 5 questions, a broken line, a `cop` out of range; dev and test beside it (not read).
    MMLU-Pro test: 3 health questions, 2 of other categories, one answer index out of range; validation,
    README.md and .gitattributes beside it."""
    med = root / "medmcqa"
    med.mkdir(parents=True)
    train = [json.dumps(medmcqa_row(i, 1 + i % 4)) for i in range(5)]
    train.insert(2, '{"id": "broken", "question": ')  # a line cut short: malformed_record
    train.append(json.dumps(medmcqa_row(9, 9)))  # cop 9 of 4 options: answer_not_in_options
    (med / "train.json").write_text("\n".join(train) + "\n")
    (med / "dev.json").write_text(json.dumps(medmcqa_row(7, 2)) + "\n")
    (med / "test.json").write_text(json.dumps({**medmcqa_row(8, 1), "cop": None}) + "\n")

    data = root / "mmlu_pro" / "data"
    data.mkdir(parents=True)
    test = [mmlu_row(0, "health"), mmlu_row(1, "law"), mmlu_row(2, "health", "C", 2), mmlu_row(3, "economics")]
    test += [mmlu_row(4, "health", "", 12), mmlu_row(5, "health", "A", 0)]
    pq.write_table(pa.Table.from_pylist(test), data / "test-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([mmlu_row(6, "health")]), data / "validation-00000-of-00001.parquet")
    (root / "mmlu_pro" / "README.md").write_text("---\nlicense: mit\n---\n# MMLU-Pro\n")
    (root / "mmlu_pro" / ".gitattributes").write_text("*.parquet filter=lfs diff=lfs merge=lfs -text\n")


EXPECTED = {
    "medmcqa": {
        "input_files": {
            "train.json": {
                "rows": 7,
                "questions": 5,
                "rejected": {"answer_not_in_options": 1, "malformed_record": 1},
                "skipped": {},
            }
        },
        "not_read": ["dev.json", "test.json"],
    },
    "mmlu_pro": {
        "input_files": {
            "data/test-00000-of-00001.parquet": {
                "rows": 6,
                "questions": 3,
                "rejected": {"answer_not_in_options": 1},
                "skipped": {"other_category": 2},
            }
        },
        "not_read": ["README.md", "data/validation-00000-of-00001.parquet"],
    },
}
TABLE_ROWS = [
    "medmcqa           train.json                              7          5         2        0  "
    "answer_not_in_options=1, malformed_record=1",
    "medmcqa           not read (2): dev.json, test.json",
    "mmlu_pro          data/test-00000-of-00001.parquet        6          3         1        2  "
    "answer_not_in_options=1, skipped:other_category=2",
    "mmlu_pro          not read (2): README.md, data/validation-00000-of-00001.parquet",
]


def assert_invariant(reads: dict) -> None:
    for source, read in reads.items():
        for file, c in read["input_files"].items():
            outcomes = c["questions"] + sum(c["rejected"].values()) + sum(c["skipped"].values())
            assert c["rows"] == outcomes, (source, file, c)


def make_config(root: Path, url: str) -> ml_collections.ConfigDict:
    config = full_mix.get_config()
    r = config.recipe
    r.name = "file_report"
    r.source_root = str(root)
    r.sources = ml_collections.ConfigDict(
        {
            "medmcqa": config_base.source("medmcqa", "medmcqa"),
            "mmlu_pro": config_base.source("mmlu_pro", "mmlu_pro", split="test"),
        }
    )
    r.decontamination.enabled = False
    for c in r.teachers:
        t = r.teachers[c]
        t.base_url, t.api_key_env, t.max_n_per_request, t.n = url, "", 4, 4
        t.backoff_base_s, t.backoff_max_s = 0.005, 0.02
    r.traces_per_question = 1
    return config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    write_sources(root)
    with FakeOpenAI() as srv:
        yield root, srv


def test_dry_run_prints_the_file_table_before_the_summary(world, tmp_path):
    root, srv = world
    printed: list[str] = []
    srv.attempts.clear()
    res = run_build(
        make_config(root, srv.base_url), out_dir=str(tmp_path), dry_run=True, progress=False, log=printed.append
    )
    assert not srv.attempts
    assert res.reads == EXPECTED
    assert_invariant(res.reads)
    lines = "\n".join(printed).splitlines()
    assert lines[0].split() == ["source", "file", "rows", "questions", "rejected", "skipped", "reasons"]
    assert lines[2:6] == TABLE_ROWS
    assert lines.index("dry run: samples to request deepseek-r1=32") > lines.index(TABLE_ROWS[-1])


def test_manifest_lists_input_files_and_not_read(world, tmp_path):
    root, srv = world
    printed: list[str] = []
    res = run_build(make_config(root, srv.base_url), out_dir=str(tmp_path), progress=False, log=printed.append)
    sources = res.manifest["sources"]
    assert {s: {k: sources[s][k] for k in ("input_files", "not_read")} for s in sources} == EXPECTED
    assert_invariant(sources)
    assert json.loads((tmp_path / "manifest.json").read_text())["sources"] == sources
    assert "\n".join(printed).splitlines()[2:6] == TABLE_ROWS
    # The per-category counts agree with the file table: 8 questions in, 5 rows counted without one.
    assert sources["medmcqa"]["categories"]["text"]["questions_in"] == 5
    assert sources["mmlu_pro"]["categories"]["unparsed"]["dropped"] == {
        "answer_not_in_options": 1,
        "skipped:other_category": 2,
    }
    # The merged manifest of a sharded build reads the same files once, not once per job.
    out = tmp_path / "sharded"
    for i in range(2):
        run_build(
            make_config(root, srv.base_url),
            out_dir=str(out),
            num_shards=2,
            shard_index=i,
            progress=False,
            log=lambda s: None,
        )
    merged = merge_manifests(str(out))["sources"]
    assert {s: {k: merged[s][k] for k in ("input_files", "not_read")} for s in merged} == EXPECTED
    assert file_table(merged).splitlines()[2:6] == TABLE_ROWS


def test_rows_an_adapter_drops_are_counted_unaccounted(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text("".join(json.dumps({"q": f"question {i}?"}) + "\n" for i in range(4)))
    (tmp_path / "notes.txt").write_text("how the data was made\n")
    (tmp_path / "img.png").write_bytes(b"\x89PNG")  # images are named by rows, not listed as not read

    def build(index: int, row: dict) -> Question:
        return Question(
            id=str(index), source="x", category="text", question=row["q"], options={"A": "a", "B": "b"}, answer="A"
        )

    def dropping_adapter():
        rows = iter_rows(find_files(tmp_path, "train", (".jsonl",)))
        return run_rows("x", (r for r in rows if r[0] != 1), build)  # row 1 vanishes: a bug, now counted

    reader = ReportedRead(dropping_adapter, tmp_path)
    assert sum(isinstance(item, Question) for item in reader) == 3
    assert reader.report.to_dict() == {
        "input_files": {"train.jsonl": {"rows": 4, "questions": 3, "rejected": {UNACCOUNTED: 1}, "skipped": {}}},
        "not_read": ["notes.txt"],
    }


def test_rows_carry_their_file_and_flattened_reads_count_outcomes(tmp_path):
    exams = tmp_path / "HEAD_EN" / "train_HEAD_EN.json"
    exams.parent.mkdir()
    exams.write_text(json.dumps({"exams": {"e1": {"data": [{"q": "first?"}, {"q": ""}, {"x": 1}]}}}))

    def build(index: int, row: dict) -> Question:  # an empty stem is rejected by Question.validate
        return Question(
            id=str(index), source="h", category="text", question=row["q"], options={"A": "a", "B": "b"}, answer="A"
        )

    def flattening_adapter():  # the way HeadQA walks its exams: rows without a Row's file
        rows = read_json_any(exams)["exams"]["e1"]["data"]
        return run_rows("h", enumerate(rows), build)

    reader = ReportedRead(flattening_adapter, tmp_path)
    items = list(reader)
    assert [type(i).__name__ for i in items] == ["Question", "Rejected", "Rejected"]
    assert {i.file for i in items if isinstance(i, Rejected)} == {str(exams)}
    assert reader.report.to_dict()["input_files"] == {
        "HEAD_EN/train_HEAD_EN.json": {
            "rows": 3,
            "questions": 1,
            "rejected": {"empty_question": 1, "malformed_record": 1},
            "skipped": {},
        }
    }
    # Outside a build (no report), iter_rows still tells run_rows the file of each rejected row.
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"q": "fine?"}\n{broken\n')
    outcomes = list(run_rows("h", iter_rows([bad]), build))
    assert isinstance(outcomes[1], Rejected) and outcomes[1].file == str(bad)
    assert outcomes[1].reason == "malformed_record"


CLI_CONFIG = """
import ml_collections
from configs import base, full_mix


def get_config():
    config = full_mix.get_config()
    r = config.recipe
    r.name = "file_report"
    r.sources = ml_collections.ConfigDict(
        {"medmcqa": base.source("medmcqa", "medmcqa"), "mmlu_pro": base.source("mmlu_pro", "mmlu_pro", split="test")}
    )
    r.decontamination.enabled = False
    for c in r.teachers:
        r.teachers[c].base_url, r.teachers[c].api_key_env, r.teachers[c].n = "http://127.0.0.1:9/v1", "", 4
    return config
"""


def test_cli_dry_run_prints_the_file_table_first(world, tmp_path, capsys):
    """`python -m data_pipeline.build --config=NAME --dry_run`: the file table, then the summary; nothing sent."""
    root, _ = world
    (tmp_path / "file_report_config.py").write_text(CLI_CONFIG)
    build_cli = [
        "build",
        f"--config={tmp_path / 'file_report_config.py'}",
        f"--config.recipe.source_root={root}",
        f"--out={tmp_path / 'out'}",
        "--dry_run",
        "--no_progress",
    ]
    build_main(build_cli)
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:6] == TABLE_ROWS
    assert lines.index("dry run: samples to request deepseek-r1=32") > 6
    assert not (tmp_path / "out" / "manifest.json").exists()
