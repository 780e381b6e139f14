"""The text sources (MedQA, HeadQA, MedMCQA) and the released traces on fixture trees laid out as the releases
ship them, extra files included: exactly one split and variant is read, every other file is reported."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import imgutil  # noqa: E402

from data_pipeline.records import Question  # noqa: E402
from data_pipeline.sources import (  # noqa: E402
    Rejected,
    ReleasedTraces,
    Skipped,
    read_headqa,
    read_medmcqa,
    read_medqa,
    read_source,
)
from data_pipeline.sources.layout import LayoutError  # noqa: E402


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def outcome(items) -> tuple[list, list[Rejected], list[str]]:
    """(questions or traces, rejections, the paths of the files reported as not read)."""
    items = list(items)
    good = [i for i in items if isinstance(i, Question | ReleasedTraces)]
    bad = [i for i in items if isinstance(i, Rejected)]
    not_read = [i.file for i in items if isinstance(i, Skipped) and i.reason == "not_read"]
    assert len(good) + len(bad) + len(not_read) == len(items)
    return good, bad, not_read


def relative(paths: list[str], root: Path) -> list[str]:
    return sorted(Path(p).relative_to(root).as_posix() for p in paths)


# --- MedQA ------------------------------------------------------------------------------------------------

PE = "A 24-year-old woman has sudden dyspnea and pleuritic chest pain after a long flight. Most likely diagnosis?"
LITHIUM = "A 35-year-old man on long-term lithium develops polyuria. Which is the most likely cause?"
OPTIONS_5 = [
    {"A": "Pneumonia", "B": "Pulmonary embolism", "C": "Pneumothorax", "D": "Asthma", "E": "Pericarditis"},
    {"A": "Central diabetes insipidus", "B": "Primary polydipsia", "C": "SIADH",
     "D": "Hyperglycemia", "E": "Nephrogenic diabetes insipidus"},
]  # fmt: skip
# The 4-option file drops one wrong option and re-letters the rest: the second answer moves from E to D.
OPTIONS_4 = [
    {"A": "Pneumonia", "B": "Pulmonary embolism", "C": "Pneumothorax", "D": "Asthma"},
    {"A": "Central diabetes insipidus", "B": "Primary polydipsia", "C": "SIADH", "D": "Nephrogenic diabetes insipidus"},
]


def medqa_rows(options: list[dict], letters: str, which: tuple[int, ...] = (0, 1), **extra) -> list[dict]:
    """The release's rows for the questions `which` (0: PE, 1: lithium), with these options and answer letters."""
    return [
        {"question": (PE, LITHIUM)[i], "answer": options[i][letters[i]], "options": options[i],
         "meta_info": "step2&3", "answer_idx": letters[i], **extra}
        for i in which
    ]  # fmt: skip


@pytest.fixture(scope="module")
def medqa_release(tmp_path_factory) -> Path:
    """`data_clean/` as unzipped: 5- and 4-option US files, metamap extracts, the qbank, other regions."""
    root = tmp_path_factory.mktemp("medqa")
    us = root / "data_clean" / "questions" / "US"
    write_jsonl(us / "train.jsonl", medqa_rows(OPTIONS_5, "BE"))
    write_jsonl(us / "dev.jsonl", medqa_rows(OPTIONS_5, "BE", (0,)))
    write_jsonl(us / "test.jsonl", medqa_rows(OPTIONS_5, "BE", (1,)))
    phrases = {"metamap_phrases": ["sudden dyspnea", "pleuritic chest pain"]}
    write_jsonl(us / "4_options" / "phrases_no_exclude_train.jsonl", medqa_rows(OPTIONS_4, "BD", **phrases))
    write_jsonl(us / "4_options" / "phrases_no_exclude_dev.jsonl", medqa_rows(OPTIONS_4, "BD", (0,), **phrases))
    write_jsonl(us / "4_options" / "phrases_no_exclude_test.jsonl", medqa_rows(OPTIONS_4, "BD", (1,), **phrases))
    write(us / "metamap_extracted_phrases" / "train" / "phrases_train.json", json.dumps([["sudden dyspnea"]]))
    write_jsonl(us / "US_qbank.jsonl", medqa_rows(OPTIONS_5, "BE"))
    mainland = root / "data_clean" / "questions" / "Mainland"
    zh = {"A": "肺炎", "B": "肺栓塞", "C": "气胸", "D": "哮喘", "E": "心包炎"}
    zh_question = {"question": "长途飞行后突发呼吸困难，最可能的诊断是", "answer": "肺栓塞", "answer_idx": "B"}
    write_jsonl(mainland / "train.jsonl", [{**zh_question, "options": zh, "meta_info": "卫生法规"}])
    write_jsonl(mainland / "4_options" / "train.jsonl", [{**zh_question, "options": dict(list(zh.items())[:4])}])
    taiwan = root / "data_clean" / "questions" / "Taiwan"
    tw = {"A": "肺炎", "B": "肺栓塞", "C": "氣胸", "D": "氣喘"}
    write_jsonl(taiwan / "train.jsonl", [{"question": "長途飛行後突發呼吸困難", "options": tw, "answer": "肺栓塞",
                                          "meta_info": "TWMLE", "answer_idx": "B"}])  # fmt: skip
    write_jsonl(taiwan / "tw_translated_jsonl" / "en" / "train-2en.jsonl", medqa_rows(OPTIONS_4, "BD", (0,)))
    write(root / "data_clean" / "textbooks" / "en" / "Pathology_Robbins.txt", "Pulmonary embolism ...")
    return root


US_EXTRAS = [
    "4_options/phrases_no_exclude_dev.jsonl",
    "4_options/phrases_no_exclude_test.jsonl",
    "4_options/phrases_no_exclude_train.jsonl",
    "US_qbank.jsonl",
    "dev.jsonl",
    "metamap_extracted_phrases/train/phrases_train.json",
    "test.jsonl",
    "train.jsonl",
]


def test_medqa_us_folder_reads_exactly_the_5_option_split(medqa_release):
    us = medqa_release / "data_clean" / "questions" / "US"
    good, bad, not_read = outcome(read_medqa(us, split="train"))
    assert bad == []
    assert [(q.id, q.question, q.answer, q.options) for q in good] == [
        ("train-0", PE, "B", OPTIONS_5[0]),
        ("train-1", LITHIUM, "E", OPTIONS_5[1]),
    ]
    assert good[0].metadata == {"region": "US", "num_options": "5", "meta_info": "step2&3"}
    # Everything else under US/ is reported, the 4-option copies and the metamap extracts included.
    assert relative(not_read, us) == [f for f in US_EXTRAS if f != "train.jsonl"]


def test_medqa_4_options_from_the_archive_root(medqa_release):
    good, bad, not_read = outcome(read_medqa(medqa_release, split="train", num_options=4))
    assert bad == []
    assert [(q.question, q.answer, q.options) for q in good] == [(PE, "B", OPTIONS_4[0]), (LITHIUM, "D", OPTIONS_4[1])]
    assert good[1].metadata["num_options"] == "4"
    reported = relative(not_read, medqa_release)
    assert "data_clean/questions/US/4_options/phrases_no_exclude_train.jsonl" not in reported
    assert "data_clean/questions/US/train.jsonl" in reported
    assert "data_clean/textbooks/en/Pathology_Robbins.txt" in reported
    assert len(reported) == 12  # 13 files in the tree, 1 read


@pytest.mark.parametrize(
    ("sub", "split", "num_options", "expected"),
    [
        ("data_clean/questions/US", "validation", 5, [(PE, "B")]),  # MedQA names validation "dev"
        ("data_clean/questions/US", "test", 4, [(LITHIUM, "D")]),
        ("data_clean/questions/US/4_options", "test", 4, [(LITHIUM, "D")]),
        ("data_clean/questions", "test", 5, [(LITHIUM, "E")]),
        ("data_clean", "train", 5, [(PE, "B"), (LITHIUM, "E")]),
    ],
)
def test_medqa_each_folder_of_the_release_selects_one_file(medqa_release, sub, split, num_options, expected):
    good, bad, _ = outcome(read_medqa(medqa_release / sub, split=split, num_options=num_options))
    assert [(q.question, q.answer) for q in good] == expected and bad == []
    assert {q.split for q in good} == {split}


def test_medqa_other_regions(medqa_release):
    (q,) = outcome(read_medqa(medqa_release, region="Mainland"))[0]
    assert (q.question, q.answer, q.options["B"], len(q.options)) == (
        "长途飞行后突发呼吸困难，最可能的诊断是",
        "B",
        "肺栓塞",
        5,
    )
    (q,) = outcome(read_medqa(medqa_release, region="Mainland", num_options=4))[0]
    assert (q.answer, q.options) == ("B", {"A": "肺炎", "B": "肺栓塞", "C": "气胸", "D": "哮喘"})
    taiwan = medqa_release / "data_clean" / "questions" / "Taiwan"
    good, _, not_read = outcome(read_medqa(taiwan, region="Taiwan", num_options=4))
    assert [(q.question, q.answer) for q in good] == [("長途飛行後突發呼吸困難", "B")]
    assert relative(not_read, taiwan) == ["tw_translated_jsonl/en/train-2en.jsonl"]


def test_medqa_wrong_variant_is_an_error_naming_it(medqa_release):
    questions = medqa_release / "data_clean" / "questions"
    with pytest.raises(ValueError, match="Taiwan has 4 options only"):
        read_medqa(medqa_release, region="Taiwan")
    with pytest.raises(LayoutError, match=r"Taiwan folder but region='US'"):
        read_medqa(questions / "Taiwan", num_options=4)
    with pytest.raises(LayoutError, match="4-option files but num_options=5"):
        read_medqa(questions / "Mainland" / "4_options", region="Mainland")
    four = questions / "US" / "4_options" / "phrases_no_exclude_train.jsonl"
    with pytest.raises(LayoutError, match=rf"{four}: its questions have 4 options, not 5; pass num_options=4"):
        list(read_medqa(four))
    with pytest.raises(FileNotFoundError, match=r"no MedQA US 4-option file for split 'train' under .*textbooks"):
        read_medqa(medqa_release / "data_clean" / "textbooks", num_options=4)


def test_medqa_hugging_face_copy(tmp_path):
    """GBaker/MedQA-USMLE-4-options: the 4-option files at the top of the repository, beside its card."""
    write_jsonl(tmp_path / "phrases_no_exclude_train.jsonl", medqa_rows(OPTIONS_4, "BD"))
    write_jsonl(tmp_path / "phrases_no_exclude_test.jsonl", medqa_rows(OPTIONS_4, "BD", (1,)))
    write(tmp_path / "README.md", "---\nlicense: cc-by-4.0\n---\n")
    good, _, not_read = outcome(read_medqa(tmp_path, split="test", num_options=4))
    assert [(q.question, q.answer, q.options) for q in good] == [(LITHIUM, "D", OPTIONS_4[1])]
    assert relative(not_read, tmp_path) == ["README.md", "phrases_no_exclude_train.jsonl"]


def test_medqa_file_without_its_columns_is_an_error(tmp_path):
    f = write_jsonl(tmp_path / "train.jsonl", [{"question": "Q?", "choices": ["a", "b"], "label": 0}])
    with pytest.raises(LayoutError, match=r"train.jsonl: expected the columns \['question', 'options', 'answer_idx'\]"):
        list(read_medqa(f))


# --- HeadQA -----------------------------------------------------------------------------------------------


def head_exam(name: str, questions: list[dict]) -> dict:
    return {"exams": {name: {"name": name, "year": "2013", "category": "medicine", "data": questions}}}


def head_question(qid: str, text: str, answers: str, ra: str, image: str = "") -> dict:
    # As released: qid and ra are strings, aid numbers, image "" or a path from the archive root.
    return {"qid": qid, "qtext": text, "ra": ra, "image": image,
            "answers": [{"aid": i, "atext": a} for i, a in enumerate(answers.split("|"), 1)]}  # fmt: skip


IMAGE = "images/Cuaderno_2013_1_M_2.png"


EN = [
    head_question(
        "1", "Hirschsprung disease is associated with:", "Neuroblastoma|Wilms tumor|Nephroma|Medullary carcinoma", "2"
    ),
    head_question("2", "The image shows a fracture of:", "Scaphoid|Radius|Ulna|Lunate", "1", IMAGE),
]
ES = [
    head_question(
        "1",
        "La enfermedad de Hirschsprung se asocia con:",
        "Neuroblastoma|Tumor de Wilms|Nefroma|Carcinoma medular",
        "2",
    ),
    head_question("2", "La imagen muestra una fractura de:", "Escafoides|Radio|Cúbito|Semilunar", "1", IMAGE),
]
EXAM = "Cuaderno_2013_1_M"


@pytest.fixture(scope="module")
def headqa_archive(tmp_path_factory) -> Path:
    """The archive as unpacked: HEAD/ and HEAD_EN/ side by side (splits, whole set, gold files), images/."""
    root = tmp_path_factory.mktemp("headqa")
    for lang_dir, questions in (("HEAD_EN", EN), ("HEAD", ES)):
        write(root / lang_dir / f"train_{lang_dir}.json", json.dumps(head_exam(EXAM, questions), ensure_ascii=False))
        write(root / lang_dir / f"dev_{lang_dir}.json", json.dumps(head_exam("Cuaderno_2014_1_B", questions[:1])))
        write(root / lang_dir / f"test_{lang_dir}.json", json.dumps(head_exam("Cuaderno_2015_1_E", questions[1:])))
        write(root / lang_dir / f"{lang_dir}.json", json.dumps(head_exam(EXAM, questions), ensure_ascii=False))
        write(root / lang_dir / f"{EXAM}.gold", "1\t2\n2\t1\n")
    write(root / "images" / "Cuaderno_2013_1_M_2.png", imgutil.png(7))
    write(root / "pdfs" / f"{EXAM}.pdf", b"%PDF-1.4\n")
    return root


def test_headqa_archive_reads_english_only_with_images_from_the_archive_root(headqa_archive):
    good, bad, not_read = outcome(read_headqa(headqa_archive, split="train"))
    assert bad == []
    assert [(q.id, q.question, q.answer, q.category) for q in good] == [
        (f"{EXAM}-1", "Hirschsprung disease is associated with:", "B", "text"),
        (f"{EXAM}-2", "The image shows a fracture of:", "A", "mm_reasoning"),
    ]
    assert good[0].options == {"A": "Neuroblastoma", "B": "Wilms tumor", "C": "Nephroma", "D": "Medullary carcinoma"}
    assert good[0].metadata == {"name": EXAM, "year": "2013", "category": "medicine", "language": "en"}
    assert good[1].images[0].data == imgutil.png(7)
    assert relative(not_read, headqa_archive) == [
        f"HEAD/{EXAM}.gold", "HEAD/HEAD.json", "HEAD/dev_HEAD.json", "HEAD/test_HEAD.json", "HEAD/train_HEAD.json",
        f"HEAD_EN/{EXAM}.gold", "HEAD_EN/HEAD_EN.json", "HEAD_EN/dev_HEAD_EN.json", "HEAD_EN/test_HEAD_EN.json",
        f"pdfs/{EXAM}.pdf",
    ]  # fmt: skip


def test_headqa_spanish_and_the_language_folder(headqa_archive):
    good, _, _ = outcome(read_headqa(headqa_archive, split="train", language="es"))
    assert [(q.question, q.answer, q.metadata["language"]) for q in good] == [
        ("La enfermedad de Hirschsprung se asocia con:", "B", "es"),
        ("La imagen muestra una fractura de:", "A", "es"),
    ]
    assert good[1].options["C"] == "Cúbito" and good[1].images[0].data == imgutil.png(7)
    # The language folder itself: images still resolve against the archive root above it.
    good, bad, not_read = outcome(read_headqa(headqa_archive / "HEAD_EN", split="test"))
    assert [(q.id, q.answer, len(q.images)) for q in good] == [("Cuaderno_2015_1_E-2", "A", 1)] and bad == []
    assert len(not_read) == 4
    (q,) = outcome(read_headqa(headqa_archive, split="validation"))[0]  # the archive's dev files
    assert (q.id, q.split) == ("Cuaderno_2014_1_B-1", "validation")


def test_headqa_other_language_is_an_error(headqa_archive):
    with pytest.raises(LayoutError, match="another language than 'en'"):
        read_headqa(headqa_archive / "HEAD")
    with pytest.raises(LayoutError, match="is a HeadQA 'es' file but language='en'"):
        read_headqa(headqa_archive / "HEAD" / "train_HEAD.json")
    with pytest.raises(ValueError, match="language must be one of"):
        read_headqa(headqa_archive, language="fr")


def test_headqa_hugging_face_parquet_copy(tmp_path):
    def rows(questions, image: bytes) -> list[dict]:
        return [{"name": EXAM, "year": "2013", "category": "medicine", "qid": int(q["qid"]), "qtext": q["qtext"],
                 "ra": int(q["ra"]), "image": {"bytes": image, "path": q["image"]} if q["image"] else None,
                 "answers": q["answers"]} for q in questions]  # fmt: skip

    for lang, questions in (("en", EN), ("es", ES)):
        for split in ("train", "validation", "test"):
            write_parquet(tmp_path / lang / f"{split}-00000-of-00001.parquet", rows(questions, imgutil.png(9)))
    write(tmp_path / "README.md", "---\nconfigs: [en, es]\n---\n")
    good, bad, not_read = outcome(read_headqa(tmp_path, split="test"))
    assert [(q.id, q.question, q.answer, q.category) for q in good] == [
        (f"{EXAM}-1", "Hirschsprung disease is associated with:", "B", "text"),
        (f"{EXAM}-2", "The image shows a fracture of:", "A", "mm_reasoning"),
    ]
    assert good[1].images[0].data == imgutil.png(9) and bad == []
    assert relative(not_read, tmp_path) == ["README.md", "en/train-00000-of-00001.parquet",
        "en/validation-00000-of-00001.parquet", "es/test-00000-of-00001.parquet", "es/train-00000-of-00001.parquet",
        "es/validation-00000-of-00001.parquet"]  # fmt: skip


def test_headqa_file_without_its_columns_is_an_error(tmp_path):
    f = write(tmp_path / "train_HEAD_EN.json", json.dumps(head_exam(EXAM, [{"id": "1", "question": "Q?"}])))
    with pytest.raises(
        LayoutError, match=r"train_HEAD_EN.json: expected the columns \['qid', 'qtext', 'ra', 'answers'\]"
    ):
        list(read_headqa(f))


# --- MedMCQA ----------------------------------------------------------------------------------------------


def mcqa(i: str, question: str, options: list[str], cop: int | None) -> dict:
    row = {"id": i, "question": question, **dict(zip(("opa", "opb", "opc", "opd"), options, strict=True)),
           "choice_type": "single", "exp": "", "subject_name": "Anatomy", "topic_name": "Upper limb"}  # fmt: skip
    return row if cop is None else {**row, "cop": cop}


DELTOID = ("Which nerve supplies the deltoid?", ["Radial", "Axillary", "Ulnar", "Median"])
THENAR = ("Which nerve supplies the thenar muscles?", ["Median", "Ulnar", "Radial", "Musculocutaneous"])
STEMS = [("e9ad821a-c438-4965-9f77-760819dfa155", *DELTOID), ("3bd4b7d0-4f2b-4b1e-8a44-5c3e1f0d2a11", *THENAR)]
# The right answers: deltoid -> Axillary (B), thenar -> Median (A).


@pytest.fixture(scope="module")
def medmcqa_original(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("medmcqa_original")
    write_jsonl(
        root / "data" / "train.json", [mcqa(i, q, o, cop) for (i, q, o), cop in zip(STEMS, (2, 1), strict=True)]
    )
    write_jsonl(root / "data" / "dev.json", [mcqa(*STEMS[0], 2)])
    write_jsonl(root / "data" / "test.json", [mcqa(*STEMS[1], None)])  # unlabelled
    write(root / "README.md", "# MedMCQA\n")
    return root


@pytest.fixture(scope="module")
def medmcqa_hf(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("medmcqa_hf")
    for split, rows in (
        ("train", [mcqa(i, q, o, cop) for (i, q, o), cop in zip(STEMS, (1, 0), strict=True)]),
        ("validation", [mcqa(*STEMS[0], 1)]),
        ("test", [mcqa(*STEMS[1], -1)]),
    ):
        write_parquet(root / "data" / f"{split}-00000-of-00001.parquet", rows)
    write(root / "README.md", "---\nlicense: apache-2.0\n---\n")
    return root


@pytest.mark.parametrize("layout", ["medmcqa_original", "medmcqa_hf"])
def test_medmcqa_base_follows_the_format(layout, request):
    root = request.getfixturevalue(layout)
    good, bad, not_read = outcome(read_medmcqa(root, split="train"))
    assert [(q.id, q.question, q.answer) for q in good] == [
        (STEMS[0][0], DELTOID[0], "B"),
        (STEMS[1][0], THENAR[0], "A"),
    ] and bad == []
    assert good[0].options == {"A": "Radial", "B": "Axillary", "C": "Ulnar", "D": "Median"}
    names = {"medmcqa_original": ["README.md", "data/dev.json", "data/test.json"],
             "medmcqa_hf": ["README.md", "data/test-00000-of-00001.parquet",
                            "data/validation-00000-of-00001.parquet"]}  # fmt: skip
    assert relative(not_read, root) == names[layout]
    (q,) = outcome(read_medmcqa(root, split="validation"))[0]
    assert (q.question, q.answer, q.split) == (DELTOID[0], "B", "validation")
    # Both test splits are unlabelled: counted, not guessed.
    good, bad, _ = outcome(read_medmcqa(root, split="test"))
    assert good == [] and [r.reason for r in bad] == ["missing_answer"]


def test_medmcqa_explicit_base_and_unknown_formats(medmcqa_hf, tmp_path):
    parquet = medmcqa_hf / "data" / "train-00000-of-00001.parquet"
    good, bad, _ = outcome(read_medmcqa(parquet, cop_base=1))  # overridden: cop 1 -> A, cop 0 out of range
    assert [q.answer for q in good] == ["A"] and [r.reason for r in bad] == ["answer_not_in_options"]
    export = write_jsonl(tmp_path / "medmcqa_train.jsonl", [mcqa(*STEMS[0], 1)])  # a JSON-lines export of the HF copy
    with pytest.raises(LayoutError, match=r"medmcqa_train.jsonl: cannot tell how `cop` is counted.*pass cop_base"):
        read_medmcqa(export)
    assert [q.answer for q in outcome(read_medmcqa(export, cop_base=0))[0]] == ["B"]


def test_medmcqa_both_layouts_or_a_foreign_file_is_an_error(medmcqa_original, tmp_path):
    write_jsonl(tmp_path / "train.json", [mcqa(*STEMS[0], 2)])
    write_parquet(tmp_path / "train-00000-of-00001.parquet", [mcqa(*STEMS[0], 1)])
    with pytest.raises(LayoutError, match="holds both the original train.json and the parquet copy"):
        read_medmcqa(tmp_path)
    f = write_jsonl(tmp_path / "other" / "train.json", [{"question": "Q?", "A": "x", "B": "y", "answer": "A"}])
    with pytest.raises(
        LayoutError, match=r"train.json: expected the columns \['question', 'opa', 'opb', 'opc', 'opd'\]"
    ):
        list(read_medmcqa(f))


# --- Released traces --------------------------------------------------------------------------------------


def released_row(answer: str = "B: Mild DR") -> dict:
    return {"question": "What is the diabetic retinopathy grade of this fundus photograph?",
            "options": ["A: No DR", "B: Mild DR", "C: Moderate DR"], "answer": answer,
            "responses": ["<think>Microaneurysms only.</think>\nThe answer is B: Mild DR"]}  # fmt: skip


def test_read_source_passes_the_adapters_own_name_option(tmp_path):
    write_parquet(tmp_path / "data" / "train-00000-of-00001.parquet", [released_row()])
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", [released_row()])
    write(tmp_path / "README.md", "---\nlicense: mit\n---\n")
    good, bad, not_read = outcome(read_source("released_traces", tmp_path, name="octomed_messidor2"))
    assert [(t.question.source, t.question.answer, t.question.options["B"]) for t in good] == [
        ("octomed_messidor2", "B", "Mild DR")
    ] and bad == []
    assert relative(not_read, tmp_path) == ["README.md", "data/test-00000-of-00001.parquet"]
    with pytest.raises(TypeError):  # the registry's own parameters are positional-only
        read_source(name="medqa", path=tmp_path)


def test_released_traces_without_responses_column_is_an_error(tmp_path):
    f = write_jsonl(tmp_path / "train.jsonl", [{"question": "Q?", "options": ["A: x", "B: y"], "answer": "A: x"}])
    with pytest.raises(LayoutError, match=r"train.jsonl: expected the columns \['question', 'answer', 'responses'\]"):
        list(read_source("released_traces", f))
