"""Image sources on fixture trees laid out as each release ships (extra files included): exact questions, letters,
options, image bytes and the files listed as not read."""

from __future__ import annotations

import csv
import gzip
import io
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

from data_pipeline.records import Question  # noqa: E402
from data_pipeline.sources import (  # noqa: E402
    SOURCES,
    Rejected,
    Skipped,
    read_classification_csv,
    read_image_folder,
    read_mimic_cxr,
    read_pmc_vqa,
    read_slake,
    read_vqa_rad,
)
from data_pipeline.sources.layout import LayoutError  # noqa: E402


def jpeg(seed: int) -> bytes:
    return imgutil.encode(imgutil.pattern(seed=seed), "JPEG")


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    data = buf.getvalue().encode()
    return write(path, gzip.compress(data) if path.name.endswith(".gz") else data)


def outcomes(items) -> tuple[list[Question], Counter, Counter, list[str]]:
    """(questions, rejection reasons, skipped reasons of rows, names of the files listed as not read)."""
    items = list(items)
    questions = [i for i in items if isinstance(i, Question)]
    rejected = Counter(i.reason for i in items if isinstance(i, Rejected))
    skipped = Counter(i.reason for i in items if isinstance(i, Skipped) and i.reason != "not_read")
    unread = sorted(Path(i.file).name for i in items if isinstance(i, Skipped) and i.reason == "not_read")
    return questions, rejected, skipped, unread


# --- PMC-VQA (xmcmic/PMC-VQA) -------------------------------------------------------------------------------

V1 = ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"]
V2 = ["index", "Figure_path", "Caption", "Question", "Choice A", "Choice B", "Choice C", "Choice D", "Answer", "split"]


@pytest.fixture(scope="module")
def pmc_release(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("PMC-VQA")
    write(root / "images" / "PMC1064097_F1.jpg", jpeg(1))
    write(root / "images" / "PMC2_F3.jpg", jpeg(2))
    write(root / "figures" / "PMC8_F2_a.jpg", jpeg(3))
    uptake = ["PMC1064097_F1.jpg", "What is the uptake pattern in the breast?", "Focal uptake pattern",
              "A:Diffuse uptake pattern", " B:Focal uptake pattern", " C:No uptake pattern",
              " D:Cannot determine from the information given", "B"]  # fmt: skip
    modality = ["PMC2_F3.jpg", "What imaging modality was used?", "CT", " A:MRI", " B:PET", " C:CT", " D:X-ray", "C"]
    write_csv(root / "train.csv", V1, [modality])
    write_csv(root / "test.csv", V1, [uptake, modality])
    write_csv(root / "test_clean.csv", V1, [modality])  # a subset of test.csv
    v2_row = ["0", "PMC8_F2_a.jpg", "Axial CT of the chest.", "Where is the lesion?", "A:Left lung", "B:Right lung",
              "C:Liver", "D:Spleen", "B", "test"]  # fmt: skip
    write_csv(root / "test_2.csv", V2, [v2_row])
    write_csv(root / "train_2.csv", V2, [[*v2_row[:-1], "train"]])
    for extra in ("images.zip", "images_2.zip", "README.md", "oa_comm_use_file_list.csv"):
        write(root / extra, b"not read")
    write(root / ".gitattributes", b"*.zip filter=lfs")
    return root


def test_pmc_vqa_v1_test_reads_test_csv_only(pmc_release):
    qs, rejected, skipped, unread = outcomes(read_pmc_vqa(pmc_release, split="test"))
    assert [(q.question, q.answer) for q in qs] == [
        ("What is the uptake pattern in the breast?", "B"),
        ("What imaging modality was used?", "C"),
    ]
    assert qs[0].options == {
        "A": "Diffuse uptake pattern",
        "B": "Focal uptake pattern",
        "C": "No uptake pattern",
        "D": "Cannot determine from the information given",
    }
    assert qs[0].images[0].data == jpeg(1) and qs[1].images[0].data == jpeg(2)
    assert qs[0].split == "test" and not rejected and not skipped
    assert unread == [".gitattributes", "README.md", "images.zip", "images_2.zip", "oa_comm_use_file_list.csv",
                      "test_2.csv", "test_clean.csv", "train.csv", "train_2.csv"]  # fmt: skip


def test_pmc_vqa_v1_test_clean(pmc_release):
    qs, _, _, unread = outcomes(read_pmc_vqa(pmc_release, split="test", test_set="test_clean"))
    assert [(q.question, q.answer, q.options["C"]) for q in qs] == [("What imaging modality was used?", "C", "CT")]
    assert "test.csv" in unread and "test_clean.csv" not in unread


def test_pmc_vqa_v2_letter_in_answer_images_in_figures(pmc_release):
    qs, rejected, _, unread = outcomes(read_pmc_vqa(pmc_release, split="test", version=2))
    assert not rejected
    assert [(q.question, q.answer) for q in qs] == [("Where is the lesion?", "B")]
    assert qs[0].options == {"A": "Left lung", "B": "Right lung", "C": "Liver", "D": "Spleen"}
    assert qs[0].images[0].data == jpeg(3) and qs[0].images[0].path == "figures/PMC8_F2_a.jpg"
    assert "test.csv" in unread and "test_2.csv" not in unread


def test_pmc_vqa_v2_as_the_dataset_card_spells_it(tmp_path):
    """The card names version 2 `train2.csv` / `test2.csv` / `images2.zip`; such a copy is read the same way."""
    v2_row = ["0", "PMC8_F2_a.jpg", "Axial CT of the chest.", "Where is the lesion?", "A:Left lung", "B:Right lung",
              "C:Liver", "D:Spleen", "B", "test"]  # fmt: skip
    write_csv(tmp_path / "test2.csv", V2, [v2_row])
    write(tmp_path / "images2" / "PMC8_F2_a.jpg", jpeg(3))
    write(tmp_path / "test.csv", b"not read")
    qs, rejected, _, unread = outcomes(read_pmc_vqa(tmp_path, split="test", version=2))
    assert [(q.question, q.answer) for q in qs] == [("Where is the lesion?", "B")] and not rejected
    assert qs[0].images[0].data == jpeg(3) and qs[0].images[0].path == "images2/PMC8_F2_a.jpg"
    assert unread == ["test.csv"]


def test_pmc_vqa_version_2_file_read_as_version_1_names_file_and_columns(pmc_release):
    with pytest.raises(LayoutError, match=r"test_2\.csv: expected the columns .*missing \['Answer_label'\].*version=2"):
        read_pmc_vqa(pmc_release / "test_2.csv", split="test")
    with pytest.raises(ValueError, match="test_clean exists for version 1 only"):
        read_pmc_vqa(pmc_release, split="test", version=2, test_set="test_clean")


# --- VQA-RAD ------------------------------------------------------------------------------------------------


def test_vqa_rad_original_release(tmp_path):
    write(tmp_path / "VQA_RAD Image Folder" / "synpic54610.jpg", jpeg(5))
    base = {"image_name": "synpic54610.jpg", "image_organ": "HEAD", "question_type": "PRES", "answer_type": "CLOSED",
            "image_case_url": "https://medpix.nlm.nih.gov/case?id=1"}  # fmt: skip
    rows = [
        {**base, "qid": 1, "question": "Is there evidence of an aortic aneurysm?", "answer": "Yes",
         "phrase_type": "freeform"},
        {**base, "qid": 2, "question": "Is the lesion on the left?", "answer": "left", "phrase_type": "freeform"},
        {**base, "qid": 3, "question": "What is abnormal?", "answer": "mass", "answer_type": "OPEN",
         "phrase_type": "para"},
        {**base, "qid": 4, "question": "Is this a CT?", "answer": "no", "phrase_type": "test_freeform"},
    ]  # fmt: skip
    write(tmp_path / "VQA_RAD Dataset Public.json", json.dumps(rows))
    for extra in ("VQA_RAD Dataset Public.xml", "VQA_RAD Dataset Public.xlsx", "Readme.docx"):
        write(tmp_path / extra, b"same rows, another format")
    qs, rejected, skipped, unread = outcomes(read_vqa_rad(tmp_path, split="train"))
    assert [(q.id, q.question, q.options, q.answer) for q in qs] == [
        ("1", "Is there evidence of an aortic aneurysm?", {"A": "yes", "B": "no"}, "A")
    ]
    assert qs[0].images[0].data == jpeg(5)
    assert rejected == {"closed_not_yes_no": 1} and skipped == {"open_question": 1, "other_split": 1}
    assert unread == ["Readme.docx", "VQA_RAD Dataset Public.xlsx", "VQA_RAD Dataset Public.xml"]
    assert [(q.id, q.answer) for q in outcomes(read_vqa_rad(tmp_path, split="test"))[0]] == [("4", "B")]


def test_vqa_rad_hf_parquet_copy(tmp_path):
    """flaviagiammarino/vqa-rad: image bytes, question, answer; no answer_type, so yes/no answers are closed."""
    table = pa.table({
        "image": [{"bytes": jpeg(6), "path": None}, {"bytes": jpeg(7), "path": None}, {"bytes": jpeg(6), "path": None}],
        "question": ["is there a pneumothorax?", "where is the mass?", "is the heart enlarged?"],
        "answer": ["no", "left upper lobe", "yes"],
    })  # fmt: skip
    pq.write_table(table, write(tmp_path / "data" / "train-00000-of-00001-eb8844602202be60.parquet", b""))
    pq.write_table(table.slice(0, 1), write(tmp_path / "data" / "test-00000-of-00001-e5bc3d208bb4deeb.parquet", b""))
    write(tmp_path / "README.md", "---\nlicense: cc0-1.0\n---\n")
    qs, rejected, skipped, unread = outcomes(read_vqa_rad(tmp_path, split="train"))
    assert [(q.id, q.question, q.answer, q.options) for q in qs] == [
        ("train-0", "is there a pneumothorax?", "B", {"A": "yes", "B": "no"}),
        ("train-2", "is the heart enlarged?", "A", {"A": "yes", "B": "no"}),
    ]
    assert [q.images[0].data for q in qs] == [jpeg(6), jpeg(6)]
    assert not rejected and skipped == {"open_question": 1}  # every row counted: 2 questions + 1 open
    assert unread == ["README.md", "test-00000-of-00001-e5bc3d208bb4deeb.parquet"]
    bad = pq.write_table(pa.table({"img": [b""], "question": ["q"]}), tmp_path / "bad.parquet")
    assert bad is None
    with pytest.raises(
        LayoutError,
        match=r"bad\.parquet: .*, missing \['image', 'answer'\]",
    ):
        read_vqa_rad(tmp_path / "bad.parquet")


# --- SLAKE --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slake_release(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("Slake1.0")
    write(root / "imgs" / "xmlab1" / "source.jpg", jpeg(8))
    write(root / "imgs" / "xmlab1" / "mask.png", imgutil.png(9))
    base = {"img_id": 1, "img_name": "xmlab1/source.jpg", "location": "Lung", "modality": "CT",
            "answer_type": "CLOSED", "base_type": "vqa", "content_type": "Abnormality",
            "triple": ["vhead", "_", "_"]}  # fmt: skip
    rows = [
        {**base, "qid": 1, "question": "Does the picture contain lung?", "answer": "Yes", "q_lang": "en"},
        {**base, "qid": 2, "question": "图中是否包含肺?", "answer": "包含", "q_lang": "zh"},
        {**base, "qid": 3, "question": "这张图片是CT吗?", "answer": "是的", "q_lang": "zh"},
        {**base, "qid": 4, "question": "图中是否包含肝脏?", "answer": "不包含", "q_lang": "zh"},
        {**base, "qid": 5, "question": "肺部健康吗?", "answer": "不是", "q_lang": "zh"},
        {**base, "qid": 6, "question": "病变在哪个肺?", "answer": "左肺", "q_lang": "zh"},
        {**base, "qid": 7, "question": "图中的主要器官是什么?", "answer": "肺", "answer_type": "OPEN", "q_lang": "zh"},
    ]  # fmt: skip
    write(root / "train.json", json.dumps(rows, ensure_ascii=False))
    write(root / "validate.json", json.dumps(rows[:1]))
    write(root / "test.json", json.dumps(rows[:1]))
    write(root / "KG" / "en_disease.csv", "disease#attribute#value\n")
    write(root / "mask.txt", "0:Background\n")
    return root


def test_slake_chinese_closed_answers_with_chinese_options(slake_release):
    items = read_slake(slake_release, split="train", languages=("en", "zh"))
    qs, rejected, skipped, unread = outcomes(items)
    assert [(q.id, q.answer, q.options) for q in qs] == [
        ("1", "A", {"A": "yes", "B": "no"}),
        ("2", "A", {"A": "是", "B": "否"}),
        ("3", "A", {"A": "是", "B": "否"}),
        ("4", "B", {"A": "是", "B": "否"}),
        ("5", "B", {"A": "是", "B": "否"}),
    ]
    assert all(q.images[0].data == jpeg(8) for q in qs)
    assert rejected == {"closed_not_yes_no": 1} and skipped == {"open_question": 1}
    assert unread == ["mask.txt", "test.json", "validate.json"]  # files of the folder itself; KG/ is a folder


def test_slake_english_only_by_default_and_validate_split(slake_release):
    qs, _, skipped, _ = outcomes(read_slake(slake_release))
    assert [q.id for q in qs] == ["1"] and skipped == {"other_language": 5, "open_question": 1}
    qs, _, _, unread = outcomes(read_slake(slake_release, split="validation"))
    assert [q.id for q in qs] == ["1"] and unread == ["mask.txt", "test.json", "train.json"]


# --- image folders with split folders (Kaggle Brain Tumor MRI) -----------------------------------------------


def test_brain_tumor_mri_split_folders(tmp_path):
    seed = 10
    for split, prefix in (("Training", "Tr"), ("Testing", "Te")):
        for cls, short in (("glioma", "gl"), ("meningioma", "me"), ("notumor", "no"), ("pituitary", "pi")):
            seed += 1
            write(tmp_path / split / cls / f"{prefix}-{short}_0010.jpg", jpeg(seed))
    write(tmp_path / "Training" / "glioma" / "Thumbs.db", b"windows")
    qs, rejected, _, unread = outcomes(read_image_folder(tmp_path, name="brain_tumor_mri", split="train", seed=0))
    assert not rejected
    assert sorted((q.id, q.metadata["label"], q.split) for q in qs) == [
        ("glioma/Tr-gl_0010.jpg", "glioma", "train"),
        ("meningioma/Tr-me_0010.jpg", "meningioma", "train"),
        ("notumor/Tr-no_0010.jpg", "notumor", "train"),
        ("pituitary/Tr-pi_0010.jpg", "pituitary", "train"),
    ]
    for q in qs:
        assert sorted(q.options.values()) == ["glioma", "meningioma", "notumor", "pituitary"]
        assert q.options[q.answer] == q.metadata["label"]
    assert {q.id: q.images[0].data for q in qs}["glioma/Tr-gl_0010.jpg"] == jpeg(11)
    assert unread == ["Testing", "Thumbs.db"]
    test_qs = outcomes(read_image_folder(tmp_path, split="test"))[0]
    assert sorted(q.id for q in test_qs)[0] == "glioma/Te-gl_0010.jpg" and {q.split for q in test_qs} == {"test"}
    write(tmp_path / "glioma" / "x.jpg", jpeg(1))
    with pytest.raises(LayoutError, match=r"split folders \['Testing', 'Training'\] beside other folders \['glioma'\]"):
        read_image_folder(tmp_path)


def test_classification_csv_missing_columns_names_file_and_columns(tmp_path):
    f = write_csv(tmp_path / "train.csv", ["id_code", "grade"], [["a", "0"]])
    with pytest.raises(
        LayoutError, match=r"train\.csv: .* \['id_code', 'diagnosis'\], missing \['diagnosis'\]"
    ):
        read_classification_csv(f, image_column="id_code", label_column="diagnosis")


# --- MIMIC-CXR-JPG ------------------------------------------------------------------------------------------

FINDINGS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
            "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
            "Pneumothorax", "Support Devices"]  # fmt: skip


def labels_row(subject: str, study: str, **values: str) -> list[str]:
    return [subject, study] + [values.get(f.replace(" ", "_"), "") for f in FINDINGS]


@pytest.fixture(scope="module")
def mimic_release(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mimic-cxr-jpg") / "2.0.0"
    # (dicom, subject, study, split, view)
    images = [
        ("d-edema-pa", "10000032", "50414267", "train", "PA"),
        ("d-edema-lat", "10000032", "50414267", "train", "LATERAL"),
        ("d-nofind-ap", "10000764", "57375967", "train", "AP"),
        ("d-uncertain", "10000898", "50771383", "train", "PA"),
        ("d-multi", "10000935", "50578979", "train", "PA"),
        ("d-nolabel", "10001038", "58224445", "train", "PA"),
        ("d-unlisted", "10001122", "51234567", "train", "AP"),
        ("d-test", "10001176", "53186264", "test", "PA"),
    ]
    for i, (dicom, subject, study, _, _) in enumerate(images):
        write(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg", jpeg(20 + i))
    write_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"],
              [[d, st, su, sp] for d, su, st, sp, _ in images])  # fmt: skip
    meta_header = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                   "Columns", "StudyDate", "StudyTime"]  # fmt: skip
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", meta_header,
              [[d, su, st, "CHEST (PA AND LAT)", v, "3056", "2544", "21800506", "213014.531"]
               for d, su, st, _, v in images])  # fmt: skip
    chexpert = [
        labels_row("10000032", "50414267", Edema="1.0", Atelectasis="0.0"),
        labels_row("10000764", "57375967", No_Finding="1.0"),
        labels_row("10000898", "50771383", Pneumonia="1.0", Edema="-1.0"),
        labels_row("10000935", "50578979", Pneumonia="1.0", Pleural_Effusion="1.0"),
        labels_row("10001038", "58224445", Cardiomegaly="0.0"),
        labels_row("10001176", "53186264", Cardiomegaly="1.0"),
    ]
    write_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *FINDINGS], chexpert)
    negbio = [labels_row("10000032", "50414267", Pneumonia="1.0"), *chexpert[1:]]
    write_csv(root / "mimic-cxr-2.0.0-negbio.csv.gz", ["subject_id", "study_id", *FINDINGS], negbio)
    for extra in ("IMAGE_FILENAMES", "LICENSE.txt", "README", "SHA256SUMS.txt"):
        write(root / extra, "release file\n")
    return root


def test_mimic_cxr_single_positive_frontal_findings(mimic_release):
    items = list(read_mimic_cxr(mimic_release, split="train", shuffle_options=False))
    qs, rejected, skipped, unread = outcomes(items)
    assert [(q.id, q.metadata["label"], q.answer) for q in qs] == [
        ("files/p10/p10000032/s50414267/d-edema-pa.jpg", "Edema", "D"),
        ("files/p10/p10000764/s57375967/d-nofind-ap.jpg", "No Finding", "I"),
    ]
    assert list(qs[0].options.values()) == FINDINGS and qs[0].category == "mm_classification"
    assert qs[0].images[0].data == jpeg(20) and qs[1].images[0].data == jpeg(22)
    assert qs[0].question == "Which of the following findings is present in this chest X-ray?"
    assert rejected == {"missing_label": 1}  # d-unlisted: its study has no label row
    assert skipped == {"not_frontal": 1, "uncertain_label": 1, "multiple_findings": 1, "no_positive_label": 1,
                       "other_split": 1}  # fmt: skip
    assert unread == ["IMAGE_FILENAMES", "LICENSE.txt", "README", "SHA256SUMS.txt", "mimic-cxr-2.0.0-negbio.csv.gz"]
    negbio = outcomes(read_mimic_cxr(mimic_release, labeler="negbio", max_options=4, seed=3))[0]
    assert [q.metadata["label"] for q in negbio] == ["Pneumonia", "No Finding"]
    assert all(len(q.options) == 4 and q.options[q.answer] == q.metadata["label"] for q in negbio)
    test = outcomes(read_mimic_cxr(mimic_release, split="test"))[0]
    assert [q.metadata["label"] for q in test] == ["Cardiomegaly"] and test[0].split == "test"


def test_mimic_cxr_wrong_file_shape_and_missing_file(mimic_release, tmp_path):
    for f in mimic_release.glob("*.gz"):
        write(tmp_path / f.name, f.read_bytes())
    write_csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz", ["dicom_id", "view"], [["d", "PA"]])
    with pytest.raises(
        LayoutError,
        match=r"metadata\.csv\.gz: .* \['dicom_id', 'ViewPosition'\], missing \['ViewPosition'\]",
    ):
        read_mimic_cxr(tmp_path)
    (tmp_path / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing \['mimic-cxr-2\.0\.0-split\.csv\.gz'\]"):
        read_mimic_cxr(tmp_path)
    assert SOURCES["mimic_cxr"].category == "mm_classification"
