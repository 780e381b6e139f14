"""One label table: a DR grade has the same option text in training (configs/full_mix.py) and evaluation."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import imgutil  # noqa: E402

from configs import full_mix  # noqa: E402
from data_pipeline.benchmarks import BENCHMARKS  # noqa: E402
from data_pipeline.labels import DR_GRADES, label_names  # noqa: E402
from data_pipeline.records import Question  # noqa: E402
from data_pipeline.sources import Skipped, read_source  # noqa: E402
from data_pipeline.sources.base import ReportedRead  # noqa: E402

GRADES = ("1", "3")  # two grades per split are enough to pair a training and a benchmark question


def _write(path: str, data: bytes | str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> tuple[str, str]:
    """APTOS and MESSIDOR-2 in their training layouts (sources/) and their benchmark layouts (benchmarks/)."""
    top = str(tmp_path_factory.mktemp("labels"))
    src, bench = f"{top}/sources", f"{top}/benchmarks"
    rows = [(f"tr{g}", g) for g in GRADES]
    _write(f"{src}/aptos/train.csv", "id_code,diagnosis\n" + "".join(f"{i},{g}\n" for i, g in rows))
    _write(f"{bench}/aptos/test.csv", "id_code,diagnosis\n" + "".join(f"te{g},{g}\n" for g in GRADES))
    messidor_rows = "".join(f"{i}.png,{g}\n" for i, g in rows)
    _write(f"{src}/messidor2/messidor_data.csv", "image_id,adjudicated_dr_grade\n" + messidor_rows)
    for n, g in enumerate(GRADES):
        _write(f"{src}/aptos/train_images/tr{g}.png", imgutil.png(seed=n))
        _write(f"{bench}/aptos/test_images/te{g}.png", imgutil.png(seed=10 + n))
        _write(f"{src}/messidor2/images/tr{g}.png", imgutil.png(seed=20 + n))
        _write(f"{bench}/messidor2/test/{g}/te{g}.png", imgutil.png(seed=30 + n))
    return src, bench


@pytest.mark.parametrize("name", ["aptos", "messidor2"])
def test_training_and_benchmark_questions_of_a_grade_have_identical_option_texts(roots, name):
    src, bench = roots
    entry = full_mix.all_sources()[name]
    training = [
        q
        for q in read_source(entry.adapter, f"{src}/{entry.path}", split=entry.split, **entry.options.to_dict())
        if isinstance(q, Question)
    ]
    benchmark, rejected = BENCHMARKS[name].load(bench)
    assert not rejected and len(training) == len(benchmark) == len(GRADES)
    by_grade = {q.metadata["label"]: q for q in benchmark}
    for t in training:
        b = by_grade[t.metadata["label"]]
        assert t.options[t.answer] == b.options[b.answer] == t.metadata["label"]
        assert sorted(t.options.values()) == sorted(b.options.values()) == sorted(DR_GRADES.values())
    assert sorted(by_grade) == ["Mild DR", "Severe DR"]


def test_one_table_serves_both_stages():
    for name in ("aptos", "messidor2"):
        entry = full_mix.all_sources()[name].options.to_dict()
        bench = BENCHMARKS[name].options
        assert entry["label_names"] == bench.get("label_names", bench.get("class_names")) == label_names(name)
    assert list(DR_GRADES.values()) == ["No DR", "Mild DR", "Moderate DR", "Severe DR", "Proliferative DR"]
    with pytest.raises(KeyError, match="bcss.*aptos"):
        label_names("bcss")


def test_coronahack_release_layout_split_by_its_metadata_column(tmp_path):
    # The Kaggle release: one metadata csv (pandas index column first) marking TRAIN / TEST, a summary csv,
    # and the images in a doubled folder per split. Training reads TRAIN rows, the benchmark TEST rows.
    top = tmp_path / "coronahack"
    header = ",X_ray_image_name,Label,Dataset_type,Label_2_Virus_category,Label_1_Virus_category\n"
    rows = [("a.jpeg", "Normal", "TRAIN"), ("b.jpeg", "Pnemonia", "TRAIN"), ("c.jpeg", "Pnemonia", "TEST")]
    _write(str(top / "Chest_xray_Corona_Metadata.csv"),
           header + "".join(f"{i},{f},{lab},{s},,\n" for i, (f, lab, s) in enumerate(rows)))
    _write(str(top / "Chest_xray_Corona_dataset_Summary.csv"), ",Label,Label_1_Virus_category,Image_Count\n")
    images = top / "Coronahack-Chest-XRay-Dataset" / "Coronahack-Chest-XRay-Dataset"
    for n, (f, _, s) in enumerate(rows):
        _write(str(images / s.lower() / f), imgutil.png(seed=40 + n))
    entry = full_mix.all_sources()["coronahack"]
    reader = ReportedRead(
        lambda: read_source(entry.adapter, str(top), split=entry.split, **entry.options.to_dict()), top
    )
    items = list(reader)
    training = [q for q in items if isinstance(q, Question)]
    assert [(q.id, q.options[q.answer]) for q in training] == [
        ("Coronahack-Chest-XRay-Dataset/Coronahack-Chest-XRay-Dataset/train/a.jpeg", "Normal"),
        ("Coronahack-Chest-XRay-Dataset/Coronahack-Chest-XRay-Dataset/train/b.jpeg", "Pneumonia"),
    ]
    assert [(s.index, s.reason) for s in items if isinstance(s, Skipped)] == [(2, "other_split")]
    assert reader.report.to_dict()["not_read"] == ["Chest_xray_Corona_dataset_Summary.csv"]
    benchmark, rejected = BENCHMARKS["coronahack"].load(str(tmp_path))
    assert rejected == {"skipped:other_split": 2}  # the TRAIN rows, counted
    assert [(q.id.rsplit("/", 2)[1:], q.options[q.answer]) for q in benchmark] == [
        (["test", "c.jpeg"], "Pneumonia")
    ]
    assert sorted(benchmark[0].options.values()) == sorted(training[0].options.values()) == ["Normal", "Pneumonia"]
