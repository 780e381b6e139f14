"""Question identity from content: `Question.key`, exact copies merged, completions never shared (issue 11, item 3)."""

from __future__ import annotations

import csv
import io
import json
import os
import sys

import grain
import ml_collections
import pytest
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import build_config  # noqa: E402
from fake_openai import FakeOpenAI  # noqa: E402

from data_pipeline.build import run_build  # noqa: E402
from data_pipeline.decontam import SameKey  # noqa: E402
from data_pipeline.records import AcceptedTrace, ImageRef, Question  # noqa: E402
from data_pipeline.sources import read_source  # noqa: E402
from data_pipeline.store import CompletionStore  # noqa: E402
from data_pipeline.teachers import Completion  # noqa: E402
from data_pipeline.writer import shard_paths  # noqa: E402

INSULIN_ID = "e9ad821a-c438-4965-9f77-760819dfa155"  # one id, two different questions (as in real releases)
INSULIN = {
    "id": INSULIN_ID,
    "question": "Which hormone is secreted by the beta cells of the pancreatic islets?",
    "opa": "Glucagon", "opb": "Insulin", "opc": "Somatostatin", "opd": "Pancreatic polypeptide",
    "cop": 2, "choice_type": "single", "exp": "", "subject_name": "Physiology", "topic_name": "Endocrine",
}
SCURVY = {
    **INSULIN,
    "question": "Deficiency of which vitamin causes scurvy?",
    "opa": "Vitamin A", "opb": "Vitamin C", "opc": "Vitamin D", "opd": "Vitamin K",
    "cop": 2, "subject_name": "Biochemistry", "topic_name": "Vitamins",
}


def png(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), (shade, 40, 200 - shade)).save(buf, format="PNG")
    return buf.getvalue()


def q(**kw) -> Question:
    base = dict(id="1", source="medqa", category="text", question="Which drug?", options={"A": "x", "B": "y"},
                answer="A")
    return Question(**{**base, **kw})


def test_key_hashes_the_content_not_the_id():
    a = q()
    # Pinned: the stores and subsets of earlier builds stay valid only while this value does not move.
    assert a.key == "medqa/0762df6d30d38431e96e1ba86ae625a6"
    assert a.label == "medqa/1"
    assert q(id="other", answer="B", split="test", metadata={"m": "1"}).key == a.key  # not identity
    assert q(question="  Which\n drug? ").key == a.key  # whitespace collapsed
    assert q(question="Which café?").key == q(question="Which cafe\u0301?").key  # Unicode NFC
    assert q(question="Which drug now?").key != a.key
    assert q(options={"A": "y", "B": "x"}).key != a.key  # options in order: the letters change
    assert q(source="headqa").key.startswith("headqa/") and q(source="headqa").key[7:] != a.key[6:]
    img1, img2 = ImageRef(data=png(10), format="png"), ImageRef(data=png(90), format="png")
    assert q(images=(img1,)).key == q(images=(ImageRef(data=png(10), format="png"),)).key != a.key
    assert q(images=(img1,)).key != q(images=(img2,)).key
    assert q(images=(img1, img2)).key != q(images=(img2, img1)).key
    # A record read back from a shard (images embedded as bytes) has the key it was written with.
    t = AcceptedTrace(q(images=(img1,)), "<think>\nx\n</think>\n\\boxed{A}", "cot", "r1", 0)
    assert AcceptedTrace.from_bytes(t.to_bytes()).question.key == t.question.key


def test_same_key_keeps_the_first_and_counts_copies_and_conflicts():
    same = SameKey()
    assert same.check(q(id="1")) is None
    assert same.check(q(id="2")) == "duplicate_question"
    assert same.check(q(id="3", answer="B")) == "conflicting_duplicate"
    assert same.check(q(id="4", question="Another")) is None
    assert same.conflicts == [("1", "A", "3", "B")]


def write_medmcqa(root: str) -> str:
    """The original release's train.json (JSON lines): the insulin and scurvy questions share an id."""
    rows = [
        INSULIN,
        SCURVY,
        {**INSULIN, "id": "0b1f2c3d-0000-4000-8000-000000000001"},  # an exact copy under another id
        {**SCURVY, "id": "0b1f2c3d-0000-4000-8000-000000000002", "cop": 3},  # the release disagrees with itself
        {**INSULIN, "id": "0b1f2c3d-0000-4000-8000-000000000003", "question": " " + INSULIN["question"] + "  "},
    ]
    os.makedirs(f"{root}/medmcqa", exist_ok=True)
    with open(f"{root}/medmcqa/train.json", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return "medmcqa/train.json"


def write_pmc_vqa(root: str) -> str:
    """PMC-VQA version 1: train.csv + figures; row 4 repeats row 0 (same figure bytes, question, options)."""
    os.makedirs(f"{root}/pmc_vqa/images", exist_ok=True)
    with open(f"{root}/pmc_vqa/train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D",
                    "Answer_label"])
        for i in range(5):
            fig = i % 4
            with open(f"{root}/pmc_vqa/images/PMC{fig}_F1.jpg.png", "wb") as img:
                img.write(png(40 * fig))
            w.writerow([f"PMC{fig}_F1.jpg.png", f"What modality is figure {fig}?", "CT", "A:CT", " B:MRI",
                        "C:X-ray", "D:US", "A"])
    return "pmc_vqa"


def make_config(root: str, url: str, **sources: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config = build_config.get_config()
    r = config.recipe
    r.source_root = root
    r.sources = ml_collections.ConfigDict(sources)
    r.decontamination.enabled = False  # merging copies does not depend on it
    for c in r.teachers:
        r.teachers[c].base_url = url
    return config


def medmcqa_entry(path: str) -> ml_collections.ConfigDict:
    from configs.base import source

    return source("medmcqa", path, cop_base=1)


def test_two_questions_with_one_id_get_their_own_completions_and_traces(tmp_path):
    root = str(tmp_path / "src")
    path = write_medmcqa(root)
    truth: dict[str, str] = {}  # the first answer of each key: the one the build keeps
    for x in read_source("medmcqa", f"{root}/{path}", cop_base=1):
        truth.setdefault(x.key, x.answer)
    assert list(truth.values()) == ["B", "B"]  # insulin and scurvy, each once, the same letter
    answer = lambda key, s: truth[key] if s % 4 != 3 else "A"  # noqa: E731
    logs: list[str] = []
    with FakeOpenAI(answer_fn=answer, reasoning_content=True) as srv:
        cfg = make_config(root, srv.base_url, medmcqa=medmcqa_entry(path))
        out = str(tmp_path / "out")
        m = run_build(cfg, out_dir=out, progress=False, log=logs.append).manifest
        # Each question was asked itself: 8 samples each, once.
        assert sorted(srv.served) == sorted((k, s) for k in truth for s in range(8))
        assert set(srv.served.values()) == {1}
        text = m["sources"]["medmcqa"]["categories"]["text"]
        assert text["questions_in"] == 5
        assert text["dropped"] == {"duplicate_question": 2, "conflicting_duplicate": 1}
        assert text["questions_kept"] == 2 and text["traces_kept"] == 2 * 4
        ds = grain.sources.ArrayRecordDataSource(shard_paths(out, "medmcqa"))
        traces = [AcceptedTrace.from_bytes(ds[i]) for i in range(len(ds))]
        assert len(traces) == text["traces_kept"] == 8  # the manifest counts the records written
        # Each trace is the reasoning about its own question (the fake teacher names the key it was asked).
        assert sorted({(t.question.question[:12], t.question.id) for t in traces}) == [
            ("Deficiency o", INSULIN_ID), ("Which hormon", INSULIN_ID)]
        assert all(f"Thinking about {t.question.key} " in t.response for t in traces)
        conflict = [line for line in logs if "different answers" in line]
        assert conflict == [
            "medmcqa: the same question (text, options, images) appears with different answers; the first is "
            f"kept: {INSULIN_ID} (B) and 0b1f2c3d-0000-4000-8000-000000000002 (C)"
        ]
        # A rerun reuses every completion: keyed by content, nothing is requested again.
        run_build(cfg, out_dir=out, progress=False, log=logs.append)
        assert set(srv.served.values()) == {1} and len(srv.served) == 16


def test_an_earlier_store_keyed_by_release_id_is_named_and_not_reused(tmp_path):
    root = str(tmp_path / "src")
    path = write_medmcqa(root)
    out = str(tmp_path / "out")
    cfg = make_config(root, "http://127.0.0.1:9/v1", medmcqa=medmcqa_entry(path))
    teacher = cfg.recipe.teachers.text
    with CompletionStore(os.path.join(out, "completions.sqlite")) as store:
        store.put([Completion(f"medmcqa/{INSULIN_ID}", teacher.name, teacher.prompt_version, i, "\\boxed{B}")
                   for i in range(8)])
        assert store.legacy_count() == 8
    logs: list[str] = []
    res = run_build(cfg, out_dir=out, dry_run=True, progress=False, log=logs.append)
    assert res.dry_run_requests == {teacher.name: 2 * 8}  # both questions paid again
    assert logs[0] == (
        f"completion store {out}/completions.sqlite: 8 completions are stored under the question keys of an "
        "earlier build (<source>/<release id>); keys now hash the question's content (records.Question.key), so "
        "those are not reused and their samples are requested again (delete the old rows or the file to reclaim "
        "the space)"
    )


@pytest.mark.parametrize("max_questions", [0, 2])
def test_image_copies_merge_and_the_subset_pass_sees_the_same_keys(tmp_path, max_questions):
    from configs.base import source

    root = str(tmp_path / "src")
    path = write_pmc_vqa(root)
    cfg = make_config(root, "http://127.0.0.1:9/v1", pmc_vqa=source("pmc_vqa", path, max_questions=max_questions))
    res = run_build(cfg, out_dir=str(tmp_path / "out"), dry_run=True, progress=False, log=lambda s: None)
    s = res.stats[("pmc_vqa", "mm_reasoning")]
    # The subset pass reads keys without decoding images; its keys are the build's (image bytes hashed).
    want = {"duplicate_question": 1} | ({"not_in_subset": 2} if max_questions else {})
    assert (s.questions_in, dict(s.dropped), s.questions_kept) == (5, want, max_questions or 4)
