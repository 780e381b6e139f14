"""MIMIC-CXR-JPG (PhysioNet), as released: findings labels -> one multiple-choice question per frontal image.

Release layout (version 2.0.0 / 2.1.0), all read from the release folder:

- `mimic-cxr-2.0.0-split.csv.gz`: `dicom_id`, `study_id`, `subject_id`, `split` (train / validate / test);
- `mimic-cxr-2.0.0-metadata.csv.gz`: `dicom_id`, ..., `ViewPosition` (PA, AP, LATERAL, LL, ...);
- `mimic-cxr-2.0.0-chexpert.csv.gz` or `-negbio.csv.gz`: `subject_id`, `study_id` and the 14 CheXpert labels
  (1.0 positive, 0.0 negative, -1.0 uncertain, empty: not mentioned), one row per study;
- `files/p10/p10000032/s50414267/<dicom_id>.jpg` (images; `p` + first two digits of the subject id).

How labels become one answer (docs/paper.md, "Training sources": classification sets as multiple choice):
a study is used when exactly one of the 14 labels is positive and none is uncertain; that label is the answer
and the options are the label names. Otherwise the image is Skipped, counted by reason: `uncertain_label`
(a -1 anywhere: the report hedges), `multiple_findings` (more than one positive: no single right option),
`no_positive_label` (nothing positive). Only frontal views (ViewPosition PA or AP) are asked (`not_frontal`);
rows of other splits are `other_split`. The other labeler's file and the release's other files are listed as
not read.
"""

from __future__ import annotations

import csv
import gzip
import itertools
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from data_pipeline.sources.base import (
    DEFAULT_IMAGES,
    SPLIT_ALIASES,
    Excluded,
    ImageSettings,
    Item,
    Rejected,
    Skipped,
)
from data_pipeline.sources.classification import _classification_questions
from data_pipeline.sources.layout import named_files, require_columns, unread_files

NAME = "mimic_cxr"
FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
FRONTAL_VIEWS = ("PA", "AP")
DEFAULT_QUESTION = "Which of the following findings is present in this chest X-ray?"
_PREFIX = "mimic-cxr-2.0.0"
_SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
_METADATA_COLUMNS = ("dicom_id", "ViewPosition")
_RELEASE_SPLIT = {"train": "train", "validation": "validate", "test": "test"}


def _rows(file: Path, expected: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a gzip-compressed release csv, after checking its header has `expected`."""
    with gzip.open(file, "rt", encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        require_columns(file, reader.fieldnames or (), expected)
        return list(reader)


def study_answer(labels: Mapping[str, str]) -> str:
    """The one positive finding of a study's label row.

    Raises:
      Excluded: `uncertain_label`, `multiple_findings` or `no_positive_label`.
      ValueError: a label value that is not a number.
    """
    values = {f: (labels.get(f) or "").strip() for f in FINDINGS}
    uncertain = [f for f, v in values.items() if v and float(v) == -1.0]
    if uncertain:
        raise Excluded("uncertain_label", f"uncertain: {uncertain}")
    positive = [f for f, v in values.items() if v and float(v) == 1.0]
    if len(positive) > 1:
        raise Excluded("multiple_findings", f"positive: {positive}")
    if not positive:
        raise Excluded("no_positive_label", "no label is positive")
    return positive[0]


def read_mimic_cxr(
    path: str | Path,
    *,
    split: str = "train",
    labeler: str = "chexpert",
    question: str = DEFAULT_QUESTION,
    max_per_class: int | None = None,
    seed: int = 0,
    shuffle_options: bool = True,
    max_options: int | None = None,
    images: ImageSettings = DEFAULT_IMAGES,
) -> Iterator[Item]:
    """Reads MIMIC-CXR-JPG frontal images with a single positive finding as multiple-choice questions.

    Args:
      path: the release folder (the `mimic-cxr-2.0.0-*.csv.gz` files and `files/`).
      split: "train", "validation" (the release's "validate") or "test".
      labeler: "chexpert" or "negbio" (which label file to read).
      question: the stem shown with every image.
      max_per_class, seed, shuffle_options, max_options: as in `classification.read_image_folder` (the options
        are the 14 finding names; `max_options` shows the right one plus random others).
      images: image checks.

    Yields:
      Question (category "mm_classification"), Rejected (`missing_label`, image errors), Skipped (see module).

    Raises:
      FileNotFoundError: a release file is missing. LayoutError: a file lacks its columns.
    """
    if labeler not in ("chexpert", "negbio"):
        raise ValueError(f"MIMIC-CXR labeler must be 'chexpert' or 'negbio', got {labeler!r}")
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"MIMIC-CXR-JPG release folder does not exist: {root} (nothing is downloaded)")
    wanted = _RELEASE_SPLIT.get(next((k for k, a in SPLIT_ALIASES.items() if split in a), split))
    if wanted is None:
        raise ValueError(f"MIMIC-CXR splits are {sorted(_RELEASE_SPLIT)}, got {split!r}")
    split_file, metadata_file, label_file = named_files(
        root,
        [f"{_PREFIX}-split.csv.gz", f"{_PREFIX}-metadata.csv.gz", f"{_PREFIX}-{labeler}.csv.gz"],
        what="a MIMIC-CXR-JPG release file",
    )
    views = {r["dicom_id"]: r["ViewPosition"].strip() for r in _rows(metadata_file, _METADATA_COLUMNS)}
    labels = {r["study_id"]: r for r in _rows(label_file, ("subject_id", "study_id", *FINDINGS))}

    rows: list[tuple[int, Any]] = []
    for index, r in enumerate(_rows(split_file, _SPLIT_COLUMNS)):
        dicom, study, subject = r["dicom_id"], r["study_id"], r["subject_id"]
        if r["split"] != wanted:
            rows.append((index, Skipped(NAME, index, "other_split", f"{dicom}: split {r['split']!r}")))
        elif views.get(dicom, "") not in FRONTAL_VIEWS:
            rows.append((index, Skipped(NAME, index, "not_frontal", f"{dicom}: view {views.get(dicom)!r}")))
        elif study not in labels:
            rows.append((index, Rejected(NAME, index, "missing_label", f"study {study} has no row in {label_file}")))
        else:
            try:
                finding = study_answer(labels[study])
            except Excluded as e:
                rows.append((index, Skipped(NAME, index, e.reason, f"study {study}: {e}")))
                continue
            except ValueError as e:
                rows.append((index, Rejected(NAME, index, "malformed_record", f"study {study} in {label_file}: {e}")))
                continue
            image = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"
            rows.append((index, {"path": image, "label": finding}))
    questions = _classification_questions(
        NAME,
        root,
        rows,
        split=split,
        question=question,
        label_names={f: f for f in FINDINGS},
        max_per_class=max_per_class,
        seed=seed,
        shuffle_options=shuffle_options,
        max_options=max_options,
        images=images,
    )
    return itertools.chain(questions, unread_files(NAME, root, [split_file, metadata_file, label_file]))
