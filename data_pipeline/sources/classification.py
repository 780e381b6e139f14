"""Image classification sets turned into multiple choice (category "mm_classification").

Two layouts: an ImageFolder (one folder per class, images anywhere below it) and a csv mapping an image id
or path to a label (APTOS: `id_code` -> `diagnosis`). Class names become the options, shuffled per question
with a seed derived from (seed, image path), so the correct letter is spread evenly and reruns are
identical. Images are sampled stratified by class: at most `max_per_class` per class, chosen with `seed`.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from data_pipeline import images as imglib
from data_pipeline.labels import label_names
from data_pipeline.records import LETTERS, BadRecordError, Question
from data_pipeline.sources.base import (
    DEFAULT_IMAGES,
    SPLIT_ALIASES,
    ImageSettings,
    Item,
    Rejected,
    Skipped,
    _RowError,
    find_files,
    iter_rows,
    load_images,
    root_of,
    run_rows,
    text_field,
)
from data_pipeline.sources.layout import LayoutError, csv_header, not_read, require_columns

DEFAULT_QUESTION = "Which of the following best describes this image?"


def stratified_sample(
    items: Iterable[tuple[int, str, str]], *, max_per_class: int | None, seed: int
) -> list[tuple[int, str, str]]:
    """At most `max_per_class` (index, path, label) items per label, chosen with `seed`, in input order."""
    by_class: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for item in items:
        by_class[item[2]].append(item)
    chosen = []
    for label in sorted(by_class):
        members = by_class[label]
        if max_per_class is not None and len(members) > max_per_class:
            # A per-class generator: adding a class does not change the sample of the others.
            members = random.Random(f"{seed}:{label}").sample(members, max_per_class)
        chosen.extend(members)
    return sorted(chosen)


def _class_options(
    label: str, classes: list[str], key: str, *, seed: int, shuffle: bool, max_options: int | None
) -> tuple[dict[str, str], str]:
    """Options (class names) for one question and its answer letter."""
    rng = random.Random(f"{seed}:{key}")
    names = list(classes)
    if max_options is not None and len(names) > max_options:
        others = [c for c in names if c != label]
        names = [label] + rng.sample(others, max_options - 1)
        names.sort(key=classes.index)
    if len(names) > len(LETTERS):
        raise BadRecordError("too_many_options", f"{len(names)} classes; set max_options")
    if shuffle:
        rng.shuffle(names)
    return dict(zip(LETTERS, names, strict=False)), LETTERS[names.index(label)]


def _classification_questions(
    name: str,
    root: Path,
    rows: list[tuple[int, Any]],
    *,
    split: str,
    question: str,
    label_names: Mapping[str, str] | None,
    max_per_class: int | None,
    seed: int,
    shuffle_options: bool,
    max_options: int | None,
    images: ImageSettings,
) -> Iterator[Item]:
    """Shared by every layout: `rows` are (index, {"path", "label"}) or (index, Rejected | Skipped)."""
    for _, row in rows:
        if isinstance(row, Rejected | Skipped):
            yield row
    good = [(i, r["path"], r["label"]) for i, r in rows if not isinstance(r, Rejected | Skipped)]

    def display(label: str) -> str:
        if label_names is None:
            return label
        if label not in label_names:
            raise BadRecordError("unknown_label", f"label {label!r} is not in label_names")
        return label_names[label]

    # The label space is the options: every named class (in the map's order, e.g. DR grades 0..4), even one
    # with no image in this split; without a map, the labels that occur, sorted.
    if label_names is not None:
        classes = list(dict.fromkeys(label_names.values()))
    else:
        classes = sorted({lab for _, _, lab in good})
    sampled = stratified_sample(good, max_per_class=max_per_class, seed=seed)
    chosen = {i for i, _, _ in sampled}
    for i, path, label in good:  # beyond the class cap: left out by design, counted
        if i not in chosen:
            yield Skipped(name, i, "not_sampled", f"{path}: class {label!r} is over max_per_class={max_per_class}")

    def build(index: int, row: dict[str, Any]) -> Question:
        label = display(row["label"])
        options, answer = _class_options(
            label, classes, row["path"], seed=seed, shuffle=shuffle_options, max_options=max_options
        )
        return Question(
            id=row["path"],
            source=name,
            category="mm_classification",
            question=question,
            options=options,
            answer=answer,
            images=load_images(root, [row["path"]], images),
            split=split,
            metadata={"label": label},
        )

    yield from run_rows(name, ((i, {"path": p, "label": lab}) for i, p, lab in sampled), build)


def _split_folder(root: Path, split: str) -> tuple[Path, list[Path]]:
    """The folder of `split` when `root` holds split folders (`Training/`, `Testing/`), and the others.

    A root whose subfolders are all split names (any alias: train/training, test/testing, val/validation)
    is a split layout: classes are the folders below the split's folder. Otherwise `root` is the split's
    folder itself (its subfolders are the classes).

    Raises:
      LayoutError: only some subfolders are split names (ambiguous), naming them.
      FileNotFoundError: a split layout without a folder for `split`.
    """
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    alias_of = {a: s for s, aliases in SPLIT_ALIASES.items() for a in aliases}
    split_names = [d for d in folders if d.name.lower() in alias_of]
    if not split_names:
        return root, []
    if len(split_names) != len(folders):
        others = [d.name for d in folders if d not in split_names]
        raise LayoutError(
            f"{root}: split folders {[d.name for d in split_names]} beside other folders {others}; point the source "
            "at a folder of split folders or at one split's class folders"
        )
    wanted = alias_of.get(split.lower(), split.lower())
    chosen = [d for d in split_names if alias_of[d.name.lower()] == wanted]
    if len(chosen) != 1:
        raise FileNotFoundError(
            f"{root}: no single folder for split {split!r} among {[d.name for d in split_names]}; nothing is downloaded"
        )
    return chosen[0], [d for d in split_names if d != chosen[0]]


def read_image_folder(
    path: str | Path,
    *,
    name: str = "image_folder",
    split: str = "train",
    question: str = DEFAULT_QUESTION,
    class_names: Mapping[str, str] | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    shuffle_options: bool = True,
    max_options: int | None = None,
    images: ImageSettings = DEFAULT_IMAGES,
) -> Iterator[Item]:
    """Reads an ImageFolder layout: `path/<class>/.../<image>`, or `path/<split>/<class>/.../<image>`.

    The Kaggle Brain Tumor MRI archive unpacks to `Training/<class>/*.jpg` and `Testing/<class>/*.jpg`: the
    split comes from the split folder and the class from the folder below it; the other split folders are
    listed as not read, and so are files that are not images.

    Args:
      path: a folder of split folders, or the split's directory (the one holding one folder per class).
      name: the source name to record (e.g. "brain_tumor_mri").
      split: the split folder to read (any alias: "train" reads `Training/`), recorded on the questions.
      question: the stem shown with every image.
      class_names: folder name -> display name, also fixing the option set and its unshuffled order
        (default: the folder names, sorted; folders missing from the map are counted as `unknown_label`).
      max_per_class: stratified cap per class (None: all).
      seed: sampling and option-shuffling seed.
      shuffle_options: shuffle the class options per question (False keeps the sorted class order).
      max_options: show at most this many classes (the right one plus random distractors).
      images: image checks.

    Yields:
      Question or Rejected, class by class, then a Skipped("not_read") per other split folder or non-image file.
    """
    top = Path(path)
    if not top.is_dir():
        raise FileNotFoundError(f"image folder does not exist: {top} (nothing is downloaded)")
    root, other_splits = _split_folder(top, split)
    rows: list[tuple[int, Any]] = []
    unread: list[Skipped] = [
        not_read(name, d, f"{d.relative_to(top)}/ is the folder of another split") for d in other_splits
    ]
    everything = sorted(f for f in root.rglob("*") if f.is_file() and not f.name.startswith("."))
    files = [f for f in everything if f.suffix.lower() in imglib.IMAGE_EXTENSIONS]
    unread += [not_read(name, f, f"{f.relative_to(top)} is not an image") for f in everything if f not in files]
    for index, f in enumerate(files):
        rel = f.relative_to(root)
        if len(rel.parts) < 2:
            rows.append((index, Rejected(name, index, "no_label", f"{rel} is not inside a class folder")))
            continue
        rows.append((index, {"path": rel.as_posix(), "label": rel.parts[0]}))
    questions = _classification_questions(
        name,
        root,
        rows,
        split=split,
        question=question,
        label_names=class_names,
        max_per_class=max_per_class,
        seed=seed,
        shuffle_options=shuffle_options,
        max_options=max_options,
        images=images,
    )
    return itertools.chain(questions, unread)


# CoronaHack as Kaggle releases it (`read_classification_csv` options; both stages read it so, the split aside).
CORONAHACK_RELEASE: dict[str, Any] = {
    "name": "coronahack",
    "csv_file": "Chest_xray_Corona_Metadata.csv",
    "split_column": "Dataset_type",
    "image_column": "X_ray_image_name",
    "label_column": "Label",
    "image_dir": "Coronahack-Chest-XRay-Dataset/Coronahack-Chest-XRay-Dataset/{split}",
    "label_names": dict(label_names("coronahack")),
}


def read_classification_csv(
    path: str | Path,
    *,
    name: str = "classification_csv",
    split: str = "train",
    image_column: str = "image",
    label_column: str = "label",
    image_root: str | Path | None = None,
    image_dir: str | None = None,
    image_suffix: str = "",
    csv_file: str | None = None,
    split_column: str | None = None,
    question: str = DEFAULT_QUESTION,
    label_names: Mapping[str, str] | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    shuffle_options: bool = True,
    max_options: int | None = None,
    images: ImageSettings = DEFAULT_IMAGES,
) -> Iterator[Item]:
    """Reads a csv of image id/path -> label (e.g. APTOS `train.csv`: `id_code`, `diagnosis`).

    Two layouts: a csv per split (APTOS `train.csv`), or one metadata csv whose `split_column` marks each row's
    split (CoronaHack's `Chest_xray_Corona_Metadata.csv`, `Dataset_type` TRAIN / TEST, images under
    `Coronahack-Chest-XRay-Dataset/Coronahack-Chest-XRay-Dataset/{train,test}/`); rows of other splits are
    skipped as `other_split`.

    Args:
      path: the csv file (or a directory with a split-named csv).
      name: the source name to record (e.g. "aptos").
      split: the split to read and record.
      image_column: column with the image id or relative path.
      label_column: column with the label.
      image_root: where images are resolved (default: the csv's directory).
      image_dir: subdirectory of `image_root` with the images (APTOS: "train_images"); `{split}` in it is
        replaced by the split read (CoronaHack: ".../{split}").
      image_suffix: appended to the id to make the file name (APTOS: ".png").
      csv_file: the csv's file name under `path`, read whatever the split (a metadata file for all splits).
      split_column: the column naming each row's split (any alias of `split`, any case); None: every row is
        of `split`.
      question, label_names, max_per_class, seed, shuffle_options, max_options, images: as in
        `read_image_folder` (`label_names` maps raw labels such as "0" to names such as "No DR"; the maps that
        training and the benchmark registry share are in `data_pipeline.labels`).

    Yields:
      Question or Rejected.
    """
    files = find_files(path, split, (".csv", ".tsv"), single_file_ok=True, file_name=csv_file)
    columns = (image_column, label_column) + ((split_column,) if split_column else ())
    for f in files:
        require_columns(f, csv_header(f), columns, hint="set image_column / label_column / split_column")
    root = root_of(files, path, image_root)
    aliases = set(SPLIT_ALIASES.get(split, (split,)))
    folder = image_dir.replace("{split}", split).rstrip("/") if image_dir else ""
    rows: list[tuple[int, Any]] = []
    for index, row in iter_rows(files):
        try:
            if isinstance(row, _RowError):
                raise KeyError(row.message)
            if split_column and text_field(row, split_column).lower() not in aliases:
                rows.append((index, Skipped(name, index, "other_split", f"row {index}: {split_column} is not {split}")))
                continue
            image_id = text_field(row, image_column)
            label = text_field(row, label_column)
            if not image_id or not label:
                raise BadRecordError("missing_answer" if image_id else "missing_image", f"row {index} is empty")
        except BadRecordError as e:
            rows.append((index, Rejected(name, index, e.reason, str(e))))
            continue
        except KeyError as e:
            rows.append((index, Rejected(name, index, "malformed_record", f"row {index}: {e}")))
            continue
        rel = f"{folder}/{image_id}{image_suffix}" if folder else f"{image_id}{image_suffix}"
        rows.append((index, {"path": rel, "label": label}))
    return _classification_questions(
        name,
        root,
        rows,
        split=split,
        question=question,
        label_names=label_names,
        max_per_class=max_per_class,
        seed=seed,
        shuffle_options=shuffle_options,
        max_options=max_options,
        images=images,
    )
