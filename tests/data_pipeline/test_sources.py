"""Each source adapter on fixture files written in that source's public format, quirks and bad inputs."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import imgutil  # noqa: E402

from data_pipeline import images as imglib  # noqa: E402
from data_pipeline.records import BadRecordError, Question  # noqa: E402
from data_pipeline.sources import (  # noqa: E402
    SOURCES,
    ImageSettings,
    Rejected,
    ReleasedTraces,
    Skipped,
    SourceAdapter,
    count_rejections,
    read_classification_csv,
    read_headqa,
    read_image_folder,
    read_medmcqa,
    read_medqa,
    read_medxpertqa,
    read_mmlu_pro,
    read_nejm,
    read_pmc_vqa,
    read_released_traces,
    read_slake,
    read_source,
    read_vqa_rad,
    register_source,
)


def write_jsonl(path: Path, rows: list, extra_lines: tuple[str, ...] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def split_items(items) -> tuple[list, list[Rejected]]:
    """(questions, rejections); rows skipped by design are checked with `skipped_reasons`."""
    items = list(items)
    good = [i for i in items if not isinstance(i, Rejected | Skipped)]
    bad = [i for i in items if isinstance(i, Rejected)]
    return good, bad


def skipped_reasons(items) -> Counter:
    return Counter(i.reason for i in items if isinstance(i, Skipped))


def reasons(bad: list[Rejected]) -> Counter:
    return Counter(r.reason for r in bad)


# --- text sources -----------------------------------------------------------------------------------------


def medqa_row(q="A 45-year-old man has chest pain. What is the diagnosis?", idx="C", answer="Aortic dissection"):
    return {
        "question": q,
        "answer": answer,
        "options": {"A": "MI", "B": "PE", "C": "Aortic dissection", "D": "Pericarditis", "E": "Pneumothorax"},
        "meta_info": "step1",
        "answer_idx": idx,
    }


def test_medqa(tmp_path):
    f = write_jsonl(
        tmp_path / "US" / "train.jsonl",
        [
            medqa_row(),
            medqa_row(idx="F", answer="x"),  # letter not among the options
            medqa_row(q="   "),  # empty question
            medqa_row(idx="B"),  # answer text says C
            medqa_row(q="Second question?", idx="E", answer="Pneumothorax"),
        ],
        extra_lines=("{not json",),
    )
    good, bad = split_items(read_medqa(tmp_path, split="train"))
    assert [q.answer for q in good] == ["C", "E"]
    q = good[0]
    assert q.id == "train-0" and q.label == "medqa/train-0" and q.category == "text"
    assert list(q.options) == ["A", "B", "C", "D", "E"] and q.options["C"] == "Aortic dissection"
    assert reasons(bad) == Counter(
        {"answer_not_in_options": 1, "empty_question": 1, "answer_mismatch": 1, "malformed_record": 1}
    )
    assert [r.index for r in bad] == [1, 2, 3, 5]
    # The same file read directly gives the same questions.
    assert [q.id for q in read_medqa(f) if isinstance(q, Question)] == ["train-0", "train-4"]


def mcqa_row(i, cop, question="Which nerve supplies the deltoid?"):
    return {
        "id": f"m{i}",
        "question": question,
        "opa": "Radial",
        "opb": "Axillary",
        "opc": "Ulnar",
        "opd": "Median",
        "cop": cop,
        "choice_type": "single",
        "subject_name": "Anatomy",
    }


def test_medmcqa_cop_is_one_based_by_default(tmp_path):
    write_jsonl(tmp_path / "train.json", [mcqa_row(0, 2), mcqa_row(1, 4), mcqa_row(2, 5), mcqa_row(3, -1)])
    write_jsonl(tmp_path / "dev.json", [mcqa_row(9, 1)])
    good, bad = split_items(read_medmcqa(tmp_path, split="train"))
    assert [(q.id, q.answer) for q in good] == [("m0", "B"), ("m1", "D")]
    assert good[0].options == {"A": "Radial", "B": "Axillary", "C": "Ulnar", "D": "Median"}
    assert good[0].metadata["subject_name"] == "Anatomy"
    assert reasons(bad) == Counter({"answer_not_in_options": 1, "missing_answer": 1})
    # "dev" is the validation split.
    good, _ = split_items(read_medmcqa(tmp_path, split="validation"))
    assert [q.answer for q in good] == ["A"]


def test_medmcqa_hf_copy_is_zero_based(tmp_path):
    f = write_jsonl(tmp_path / "x.jsonl", [mcqa_row(0, 1), mcqa_row(1, 0), mcqa_row(2, 4)])
    good, bad = split_items(read_medmcqa(f, cop_base=0))
    assert [q.answer for q in good] == ["B", "A"]
    assert reasons(bad) == Counter({"answer_not_in_options": 1})


def headqa_question(qid, ra, image=""):
    return {
        "qid": qid,
        "qtext": f"Question {qid}: which is the treatment of choice?",
        "ra": ra,
        "image": image,
        # Deliberately out of aid order: the options follow aid order.
        "answers": [
            {"aid": 3, "atext": "Surgery"},
            {"aid": 1, "atext": "Observation"},
            {"aid": 2, "atext": "Antibiotics"},
            {"aid": 4, "atext": "Radiotherapy"},
        ],
    }


def test_headqa_original_layout(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "q3.png").write_bytes(imgutil.png(3))
    data = {
        "version": "1.0",
        "exams": {
            "Cuaderno_2013_1_B": {
                "name": "Cuaderno_2013_1_B",
                "year": "2013",
                "category": "biology",
                "data": [
                    headqa_question(1, 3),
                    headqa_question(2, 7),  # ra is not an answer id
                    headqa_question(3, 1, image="images/q3.png"),
                    headqa_question(4, 2, image="images/none.png"),
                ],
            }
        },
    }
    (tmp_path / "train_HEAD_EN.json").write_text(json.dumps(data))
    good, bad = split_items(read_headqa(tmp_path, split="train"))
    assert [(q.id, q.answer, q.category) for q in good] == [
        ("Cuaderno_2013_1_B-1", "C", "text"),
        ("Cuaderno_2013_1_B-3", "A", "mm_reasoning"),
    ]
    assert good[0].options == {"A": "Observation", "B": "Antibiotics", "C": "Surgery", "D": "Radiotherapy"}
    assert good[0].metadata == {"name": "Cuaderno_2013_1_B", "year": "2013", "category": "biology", "language": "en"}
    assert good[1].images[0].data == imgutil.png(3) and good[1].images[0].format == "png"
    assert reasons(bad) == Counter({"answer_not_in_options": 1, "missing_image": 1})


def test_headqa_flat_hf_layout(tmp_path):
    rows = [{"name": "exam", "year": 2016, "category": "medicine", **headqa_question(5, 4)}]
    f = tmp_path / "test.json"
    f.write_text(json.dumps(rows))
    (q,) = read_headqa(f, split="test")
    assert q.answer == "D" and q.id == "exam-5" and q.split == "test"


def test_mmlu_pro_health_only(tmp_path):
    opts = [f"option {i}" for i in range(10)]
    table = pa.Table.from_pylist(
        [
            {"question_id": 1, "question": "Health q?", "options": opts, "answer": "J", "answer_index": 9,
             "category": "health", "src": "ori_mmlu"},
            {"question_id": 2, "question": "Law q?", "options": opts, "answer": "A", "answer_index": 0,
             "category": "law", "src": "x"},
            {"question_id": 3, "question": "Health 2?", "options": opts[:4] + ["N/A"], "answer": None,
             "answer_index": 2, "category": "health", "src": "x"},
        ]
    )  # fmt: skip
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "test-00000-of-00001.parquet")
    items = list(read_mmlu_pro(tmp_path))
    good, bad = split_items(items)
    assert [(q.id, q.answer, len(q.options)) for q in good] == [("1", "J", 10), ("3", "C", 4)]
    assert good[0].options["J"] == "option 9" and not bad
    assert skipped_reasons(items) == {"other_category": 1}  # the law question: counted, not an error


def test_medxpertqa_text_strips_answer_choices(tmp_path):
    row = {
        "id": "Text-1",
        "question": "A 30-year-old woman ... What is next? Answer Choices: (A) CT (B) MRI (C) Biopsy",
        "options": {"A": "CT", "B": "MRI", "C": "Biopsy"},
        "label": "B",
        "images": [],
        "medical_task": "Diagnosis",
        "body_system": "Nervous",
        "question_type": "Reasoning",
    }
    write_jsonl(tmp_path / "Text" / "test.jsonl", [row])
    (q,) = read_medxpertqa(tmp_path, subset="text")
    assert q.question == "A 30-year-old woman ... What is next?"
    assert q.answer == "B" and q.source == "medxpertqa_text" and q.category == "text"
    assert q.metadata == {"medical_task": "Diagnosis", "body_system": "Nervous", "question_type": "Reasoning"}


def test_medxpertqa_mm_images_and_path_escape(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(imgutil.png(1))
    (tmp_path / "images" / "b.jpg").write_bytes(imgutil.encode(imgutil.pattern(seed=2), "JPEG"))
    (tmp_path.parent / "secret.png").write_bytes(imgutil.png(9))  # exists, but outside the root

    def row(i, images):
        return {"id": f"MM-{i}", "question": "What is shown?", "options": {"A": "x", "B": "y"},
                "label": "A", "images": images}  # fmt: skip

    write_jsonl(
        tmp_path / "MM" / "test.jsonl",
        [row(0, ["a.png", "b.jpg"]), row(1, ["../../secret.png"]), row(2, ["/etc/passwd"]), row(3, ["a.png"])],
    )
    good, bad = split_items(read_medxpertqa(tmp_path / "MM" / "test.jsonl", subset="mm"))
    assert [q.id for q in good] == ["MM-0", "MM-3"]
    assert [im.format for im in good[0].images] == ["png", "jpeg"]
    assert good[0].images[0].path == "images/a.png"
    assert reasons(bad) == Counter({"path_escape": 2})
    assert SOURCES["medxpertqa_mm"].read(tmp_path, split="test") is not None


def test_pmc_vqa_choice_prefixes(tmp_path):
    img = tmp_path / "images"
    img.mkdir()
    (img / "PMC1_fig1.jpg").write_bytes(imgutil.encode(imgutil.pattern(seed=4), "JPEG"))
    (img / "PMC2_fig1.png").write_bytes(imgutil.corrupt_png())
    fields = ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"]
    rows = [
        ["PMC1_fig1.jpg", "What modality is shown?", "CT", "A:MRI", " B:CT", " C: Ultrasound", " D:X-ray", "B"],
        ["PMC2_fig1.png", "What is shown?", "CT", "A:MRI", " B:CT", " C:US", " D:X-ray", "B"],
        ["PMC3_fig1.png", "What is shown?", "CT", "A:MRI", " B:CT", " C:US", " D:X-ray", "B"],
        ["PMC1_fig1.jpg", "Which one?", "CT", "A:MRI", " B:CT", " C:US", " D:X-ray", "E"],
    ]
    with (tmp_path / "train.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(fields)
        w.writerows(rows)
    good, bad = split_items(read_pmc_vqa(tmp_path, split="train"))
    assert len(good) == 1
    q = good[0]
    assert q.options == {"A": "MRI", "B": "CT", "C": "Ultrasound", "D": "X-ray"}
    assert q.answer == "B" and q.category == "mm_reasoning" and q.images[0].format == "jpeg"
    assert reasons(bad) == Counter({"corrupt_image": 1, "missing_image": 1, "answer_not_in_options": 1})


def test_vqa_rad_closed_yes_no(tmp_path):
    folder = tmp_path / "VQA_RAD Image Folder"
    folder.mkdir()
    (folder / "synpic1.jpg").write_bytes(imgutil.encode(imgutil.pattern(seed=5), "JPEG"))
    base = {"image_name": "synpic1.jpg", "image_organ": "CHEST", "question_type": "PRES"}
    rows = [
        {**base, "qid": 1, "question": "Is there a pneumothorax?", "answer": "Yes", "answer_type": "CLOSED",
         "phrase_type": "freeform"},
        {**base, "qid": 2, "question": "Is the heart enlarged?", "answer": "no", "answer_type": "CLOSED",
         "phrase_type": "para"},
        {**base, "qid": 3, "question": "What organ?", "answer": "lung", "answer_type": "OPEN",
         "phrase_type": "freeform"},
        {**base, "qid": 4, "question": "Left or right?", "answer": "left", "answer_type": "CLOSED",
         "phrase_type": "freeform"},
        {**base, "qid": 5, "question": "Is this a CT?", "answer": "no", "answer_type": "CLOSED",
         "phrase_type": "test_freeform"},
    ]  # fmt: skip
    (tmp_path / "VQA_RAD Dataset Public.json").write_text(json.dumps(rows))
    items = list(read_vqa_rad(tmp_path, split="train"))
    good, bad = split_items(items)
    assert [(q.id, q.answer) for q in good] == [("1", "A"), ("2", "B")]
    assert good[0].options == {"A": "yes", "B": "no"} and good[0].metadata["image_organ"] == "CHEST"
    assert reasons(bad) == Counter({"closed_not_yes_no": 1})
    assert skipped_reasons(items) == {"open_question": 1, "other_split": 1}  # every row accounted for
    assert [q.id for q in split_items(read_vqa_rad(tmp_path, split="test"))[0]] == ["5"]


def test_slake_english_by_default(tmp_path):
    (tmp_path / "imgs" / "xmlab1").mkdir(parents=True)
    (tmp_path / "imgs" / "xmlab1" / "source.jpg").write_bytes(imgutil.encode(imgutil.pattern(seed=6), "JPEG"))
    base = {"img_name": "xmlab1/source.jpg", "modality": "MRI", "answer_type": "CLOSED"}
    rows = [
        {**base, "qid": 10, "question": "Is this an MRI?", "answer": "Yes", "q_lang": "en"},
        {**base, "qid": 11, "question": "这是MRI吗?", "answer": "是", "q_lang": "zh"},
        {**base, "qid": 12, "question": "Is it healthy?", "answer": "No", "q_lang": "en", "img_name": "xmlab9/x.jpg"},
    ]
    (tmp_path / "train.json").write_text(json.dumps(rows, ensure_ascii=False))
    good, bad = split_items(read_slake(tmp_path / "train.json"))
    assert [(q.id, q.answer, q.source) for q in good] == [("10", "A", "slake")]
    assert reasons(bad) == Counter({"missing_image": 1})


def test_nejm(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "20230105.jpg").write_bytes(imgutil.encode(imgutil.pattern(seed=7), "JPEG"))
    rows = [
        {"id": "20230105", "question": "What is the diagnosis?", "A": "Psoriasis", "B": "Eczema", "C": "Tinea",
         "D": "Lichen planus", "E": "Scabies", "answer": "D", "image": "20230105.jpg"},
        {"id": "20230112", "question": "What is the diagnosis?",
         "options": {"A": "One", "B": "Two", "C": "Three", "D": "Four", "E": "Five"}, "answer": "Three",
         "image": "20230105.jpg"},
        {"id": "20230119", "question": "Diagnosis?", "A": "x", "B": "y", "answer": "B", "image": "missing.jpg"},
    ]  # fmt: skip
    f = write_jsonl(tmp_path / "nejm.jsonl", rows)
    good, bad = split_items(read_nejm(f, image_dir="img"))
    assert [(q.id, q.answer, len(q.options)) for q in good] == [("20230105", "D", 5), ("20230112", "C", 5)]
    assert good[0].options["D"] == "Lichen planus" and good[0].images[0].format == "jpeg"
    assert reasons(bad) == Counter({"missing_image": 1})


# --- classification ---------------------------------------------------------------------------------------


def make_image_folder(root: Path, counts: dict[str, int]) -> None:
    seed = 0
    for label, n in counts.items():
        (root / label).mkdir(parents=True)
        for i in range(n):
            seed += 1
            (root / label / f"{i:03d}.png").write_bytes(imgutil.png(seed, 16, 16))


def test_image_folder_stratified_and_shuffled(tmp_path):
    make_image_folder(tmp_path, {"glioma": 5, "meningioma": 3, "pituitary": 1, "no_tumor": 4})
    (tmp_path / "glioma" / "bad.png").write_bytes(imgutil.corrupt_png())
    (tmp_path / "stray.png").write_bytes(imgutil.png(99, 16, 16))
    names = {"glioma": "Glioma", "meningioma": "Meningioma", "pituitary": "Pituitary tumor", "no_tumor": "No tumor"}
    items = list(read_image_folder(tmp_path, name="brain_tumor", class_names=names, max_per_class=3, seed=1))
    good, bad = split_items(items)
    per_class = Counter(q.metadata["label"] for q in good)
    bad_reasons = reasons(bad)
    # glioma has 6 candidates (5 good + 1 corrupt); 3 are sampled, so the corrupt one may or may not be in.
    assert bad_reasons["no_label"] == 1 and set(bad_reasons) <= {"no_label", "corrupt_image"}
    assert per_class["Meningioma"] == 3 and per_class["Pituitary tumor"] == 1 and per_class["No tumor"] == 3
    assert per_class["Glioma"] + bad_reasons["corrupt_image"] == 3
    # Over the cap: glioma 6 - 3 and no_tumor 4 - 3 are left out by design, each counted.
    assert skipped_reasons(items) == {"not_sampled": 4}
    assert len(items) == 5 + 1 + 3 + 1 + 4 + 1  # every image file and the stray file: one outcome each
    for q in good:
        assert sorted(q.options.values()) == sorted(names.values())
        assert q.options[q.answer] == q.metadata["label"]
        assert q.category == "mm_classification" and q.source == "brain_tumor"
        assert q.images[0].path == q.id
    # Shuffled per question: the correct letter is not always the same, and reruns are identical.
    assert len({q.answer for q in good}) > 1
    again = [q for q in read_image_folder(tmp_path, name="brain_tumor", class_names=names, max_per_class=3, seed=1)
             if isinstance(q, Question)]  # fmt: skip
    assert [(q.id, q.options, q.answer) for q in again] == [(q.id, q.options, q.answer) for q in good]
    other_seed = [q for q in read_image_folder(tmp_path, class_names=names, max_per_class=3, seed=2)
                  if isinstance(q, Question)]  # fmt: skip
    assert [(q.options, q.id) for q in other_seed] != [(q.options, q.id) for q in good]


def test_image_folder_unshuffled_and_max_options(tmp_path):
    make_image_folder(tmp_path, {"a": 1, "b": 1, "c": 1, "d": 1, "e": 1})
    qs = [q for q in read_image_folder(tmp_path, shuffle_options=False) if isinstance(q, Question)]
    assert all(list(q.options.values()) == ["a", "b", "c", "d", "e"] for q in qs)
    assert [q.answer for q in qs] == ["A", "B", "C", "D", "E"]
    qs = [q for q in read_image_folder(tmp_path, max_options=3) if isinstance(q, Question)]
    assert all(len(q.options) == 3 and q.options[q.answer] == q.metadata["label"] for q in qs)


def test_classification_csv_aptos_layout(tmp_path):
    (tmp_path / "train_images").mkdir()
    for i in range(4):
        (tmp_path / "train_images" / f"id{i}.png").write_bytes(imgutil.png(i, 16, 16))
    rows = [("id0", "0"), ("id1", "2"), ("id2", "2"), ("id3", "9"), ("missing", "0"), ("../../x", "2")]
    with (tmp_path / "train.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id_code", "diagnosis"])
        w.writerows(rows)
    labels = {"0": "No DR", "1": "Mild", "2": "Moderate", "3": "Severe", "4": "Proliferative DR"}
    good, bad = split_items(
        read_classification_csv(
            tmp_path / "train.csv", name="aptos", image_column="id_code", label_column="diagnosis",
            image_dir="train_images", image_suffix=".png", label_names=labels, seed=0,
        )
    )  # fmt: skip
    assert sorted(q.id for q in good) == ["train_images/id0.png", "train_images/id1.png", "train_images/id2.png"]
    for q in good:
        # Options are the whole label space (even grades with no image here); answer text matches the label.
        assert sorted(q.options.values()) == sorted(labels.values())
        assert q.options[q.answer] == q.metadata["label"]
    assert reasons(bad) == Counter({"unknown_label": 1, "missing_image": 1, "path_escape": 1})
    unshuffled = read_classification_csv(
        tmp_path / "train.csv", image_column="id_code", label_column="diagnosis", image_dir="train_images",
        image_suffix=".png", label_names=labels, shuffle_options=False,
    )  # fmt: skip
    first = next(x for x in unshuffled if isinstance(x, Question))
    assert list(first.options.values()) == list(labels.values()) and first.answer == "A"  # id0 is grade 0


# --- released traces --------------------------------------------------------------------------------------


def test_released_traces_parquet_with_image_struct(tmp_path):
    img = imgutil.png(11)
    responses = [f"<think>reasoning {i}</think>\nThe answer is A: No DR" for i in range(16)]
    rows = [
        {"image": {"bytes": img, "path": "fundus1.png"}, "question": "What DR grade?",
         "options": ["A: No DR", "B: Mild", "C: Moderate", "D: Severe", "E: Proliferative DR"],
         "answer": "A: No DR", "responses": responses},
        {"image": {"bytes": img, "path": "fundus2.png"}, "question": "What DR grade?",
         "options": ["A: No DR", "B: Mild"], "answer": "B: Mild", "responses": []},
        {"image": {"bytes": imgutil.corrupt_png(), "path": "f3.png"}, "question": "What DR grade?",
         "options": ["A: No DR", "B: Mild"], "answer": "B: Mild", "responses": responses[:1]},
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train-00000-of-00001.parquet")
    good, bad = split_items(read_released_traces(tmp_path, name="octomed_messidor2", category="mm_classification"))
    assert len(good) == 1 and isinstance(good[0], ReleasedTraces)
    t = good[0]
    assert t.responses == tuple(responses) and t.teacher == "octomed-released"
    q = t.question
    assert q.options == {"A": "No DR", "B": "Mild", "C": "Moderate", "D": "Severe", "E": "Proliferative DR"}
    assert q.answer == "A" and q.category == "mm_classification" and q.source == "octomed_messidor2"
    assert q.images[0].data == img and q.images[0].format == "png"
    assert reasons(bad) == Counter({"no_responses": 1, "corrupt_image": 1})


def test_released_traces_jsonl_text(tmp_path):
    f = write_jsonl(
        tmp_path / "medqa_traces.jsonl",
        [{"question": "Q?", "options": ["A: x", "B: y", "C: z"], "answer": "C: z", "responses": ["<think>r</think>C"]}],
    )
    (t,) = read_released_traces(f)
    assert t.question.answer == "C" and t.question.category == "text" and t.responses == ("<think>r</think>C",)


# --- image checks and shared behaviour --------------------------------------------------------------------


def test_image_too_large_from_header_without_decoding(tmp_path):
    # 64 MP: over our 50 MP default, under PIL's own warning threshold (~89 MP), so our header check decides.
    (tmp_path / "big.png").write_bytes(imgutil.png_header_only(8_000, 8_000))
    with pytest.raises(BadRecordError, match="64000000 pixels") as e:
        imglib.load_image(tmp_path, "big.png")
    assert e.value.reason == "image_too_large"
    # PIL's own decompression-bomb guard (over 2x MAX_IMAGE_PIXELS) is also a counted image_too_large.
    (tmp_path / "bomb.png").write_bytes(imgutil.png_header_only(30_000, 30_000))
    with pytest.raises(BadRecordError) as e:
        imglib.load_image(tmp_path, "bomb.png", max_pixels=10**12)
    assert e.value.reason == "image_too_large"
    # Under the limit the same header is just a corrupt image (its pixel data is missing).
    (tmp_path / "small.png").write_bytes(imgutil.png_header_only(100, 100))
    with pytest.raises(BadRecordError) as e:
        imglib.load_image(tmp_path, "small.png")
    assert e.value.reason == "corrupt_image"


def test_bomb_in_an_adapter_is_counted_and_the_rest_continues(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "ok.png").write_bytes(imgutil.png(1))
    (tmp_path / "images" / "bomb.png").write_bytes(imgutil.png_header_only(20_000, 20_000))
    rows = [{"id": str(i), "question": "Q?", "options": {"A": "x", "B": "y"}, "label": "A", "images": [name]}
            for i, name in enumerate(["bomb.png", "ok.png"])]  # fmt: skip
    write_jsonl(tmp_path / "MM" / "test.jsonl", rows)
    counts: Counter = Counter()
    kept = list(count_rejections(read_source("medxpertqa_mm", tmp_path), counts))
    assert [q.id for q in kept] == ["1"] and counts == Counter({"image_too_large": 1})


def test_symlink_out_of_root_is_an_escape(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.png").write_bytes(imgutil.png(2))
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    with pytest.raises(BadRecordError) as e:
        imglib.load_image(root, "link.png")
    assert e.value.reason == "path_escape"


def test_header_only_mode_and_path_only_refs(tmp_path):
    (tmp_path / "c.png").write_bytes(imgutil.corrupt_png())
    ref = imglib.load_image(tmp_path, "c.png", decode=False, load_bytes=False)  # header is fine
    assert ref.data is None and ref.path == "c.png" and ref.format == "png"
    settings = ImageSettings(decode=True)
    assert settings.max_pixels == 50_000_000


def test_missing_input_path_names_it(tmp_path):
    missing = tmp_path / "nope" / "train.jsonl"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        list(read_medqa(missing))
    with pytest.raises(FileNotFoundError, match="split 'test'"):
        read_medqa(tmp_path, split="test")


def test_registry():
    expected = {
        "medqa", "medmcqa", "headqa", "mmlu_pro", "medxpertqa_text", "medxpertqa_mm", "pmc_vqa", "vqa_rad",
        "slake", "nejm", "image_folder", "classification_csv", "mimic_cxr", "released_traces",
    }  # fmt: skip
    assert set(SOURCES) == expected  # the public formats only: the demo's world is a plugin (tests/demo)
    assert all(a.name == k for k, a in SOURCES.items())
    with pytest.raises(KeyError, match=r"unknown source 'pubmedqa'.*config\.plugins"):
        read_source("pubmedqa", ".")
    with pytest.raises(ValueError, match="'medqa' is already registered"):  # a plugin cannot replace a format
        register_source(SourceAdapter("medqa", read_source, "text", "an impostor"))
    assert SOURCES["medqa"].read is read_medqa


def test_data_pipeline_imports_no_jax():
    import subprocess

    code = (
        "import sys, data_pipeline.sources, data_pipeline.answers, data_pipeline.formats, "
        "data_pipeline.decontam, data_pipeline.images, data_pipeline.benchmarks, data_pipeline.labels; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax')]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
