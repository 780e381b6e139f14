"""Source adapters: public question sets -> `Question`s (or `ReleasedTraces`), one module per format.

Convention (details in `base`):

- `SOURCES[name].read(path, *, split=..., **options) -> Iterator[Question | ReleasedTraces | Rejected | Skipped]`.
- A bad row never raises: it is yielded as `Rejected(source, index, reason, message)` and the next row is
  read. `count_rejections(items, counter)` strips them off into a `Counter` of reasons for the manifest.
- Rows left out by design (another category or language, open questions) are yielded as counted `Skipped`
  rows (`skipped:<reason>`), and files of the release an adapter leaves alone as `Skipped("not_read")`.
- Images are read as the original bytes, checked by `data_pipeline.images` (`path_escape`,
  `missing_image`, `corrupt_image`, `image_too_large`).
- Nothing is downloaded; a missing input path raises FileNotFoundError naming it.

Example:
    counts = Counter()
    for q in count_rejections(read_source("medmcqa", "data/medmcqa", split="train"), counts):
        ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from data_pipeline.plugins import PLUGIN_HINT
from data_pipeline.sources.base import (
    Excluded,
    ImageSettings,
    Item,
    Rejected,
    ReleasedTraces,
    Skipped,
    count_rejections,
    outcome_key,
)
from data_pipeline.sources.classification import read_classification_csv, read_image_folder
from data_pipeline.sources.headqa import read_headqa
from data_pipeline.sources.medmcqa import read_medmcqa
from data_pipeline.sources.medqa import read_medqa
from data_pipeline.sources.medxpertqa import read_medxpertqa
from data_pipeline.sources.mimic_cxr import read_mimic_cxr
from data_pipeline.sources.mmlu_pro import read_mmlu_pro
from data_pipeline.sources.nejm import read_nejm
from data_pipeline.sources.pmc_vqa import read_pmc_vqa
from data_pipeline.sources.released import read_released_traces
from data_pipeline.sources.vqa_closed import read_slake, read_vqa_rad


@dataclasses.dataclass(frozen=True)
class SourceAdapter:
    """A registered adapter.

    Attributes:
      name: registry key (also the `source` of its questions, except the generic classification and
        released-trace readers, which take a `name=` option).
      read: the reader function.
      category: the category its questions get ("mixed" when it depends on the row or the options).
      description: one line for `--help` and the manifest.
    """

    name: str
    read: Callable[..., Iterator[Item]]
    category: str
    description: str


def _medxpertqa_mm(path: str | Path, **kwargs: Any) -> Iterator[Item]:
    return read_medxpertqa(path, subset="mm", **kwargs)


def _medxpertqa_text(path: str | Path, **kwargs: Any) -> Iterator[Item]:
    return read_medxpertqa(path, subset="text", **kwargs)


SOURCES: dict[str, SourceAdapter] = {
    a.name: a
    for a in (
        SourceAdapter("medqa", read_medqa, "text", "MedQA jsonl, one region x 4/5 options (default US, 5)"),
        SourceAdapter("medmcqa", read_medmcqa, "text", "MedMCQA json (cop from 1) or HF parquet (cop from 0)"),
        SourceAdapter("headqa", read_headqa, "mixed", "HeadQA archive json or HF parquet, one language (default en)"),
        SourceAdapter("mmlu_pro", read_mmlu_pro, "text", "MMLU-Pro, health category"),
        SourceAdapter("medxpertqa_text", _medxpertqa_text, "text", "MedXpertQA Text jsonl"),
        SourceAdapter("medxpertqa_mm", _medxpertqa_mm, "mm_reasoning", "MedXpertQA MM jsonl + images/"),
        SourceAdapter("pmc_vqa", read_pmc_vqa, "mm_reasoning", "PMC-VQA csv (Choice A..D as 'A:text')"),
        SourceAdapter("vqa_rad", read_vqa_rad, "mm_reasoning", "VQA-RAD closed yes/no questions"),
        SourceAdapter("slake", read_slake, "mm_reasoning", "SLAKE closed yes/no questions (English)"),
        SourceAdapter("nejm", read_nejm, "mm_reasoning", "NEJM Image Challenge json/jsonl"),
        SourceAdapter("image_folder", read_image_folder, "mm_classification", "ImageFolder classification set"),
        SourceAdapter("classification_csv", read_classification_csv, "mm_classification", "csv image -> label"),
        SourceAdapter("mimic_cxr", read_mimic_cxr, "mm_classification", "MIMIC-CXR-JPG: one positive finding, frontal"),
        SourceAdapter("released_traces", read_released_traces, "mixed", "OctoMed released traces (parquet/jsonl)"),
    )
}


def register_source(adapter: SourceAdapter) -> None:
    """Adds `adapter` to `SOURCES` under `adapter.name` (a plugin's `register()` calls this).

    Registering the same adapter again does nothing, so a plugin may be loaded more than once.

    Raises:
      ValueError: another adapter already has that name (a plugin cannot replace a registered format).
    """
    registered = SOURCES.get(adapter.name)
    if registered is not None and registered != adapter:
        raise ValueError(f"source adapter {adapter.name!r} is already registered ({registered.description})")
    SOURCES[adapter.name] = adapter


def read_source(name: str, path: str | Path, /, **options: Any) -> Iterator[Item]:
    """Reads source `name` from local `path`; `options` go to its reader (split, image settings, ...).

    `name` and `path` are positional-only, so an adapter's own `name=` option (the released-trace and
    classification readers) passes through: `read_source("released_traces", path, name="octomed_messidor2")`.

    Raises:
      KeyError: an unknown source name (the message lists the known ones).
      FileNotFoundError: the path does not exist.
    """
    if name not in SOURCES:
        raise KeyError(f"unknown source {name!r}; known: {sorted(SOURCES)}; {PLUGIN_HINT}")
    return SOURCES[name].read(path, **options)


__all__ = [
    "SOURCES",
    "ImageSettings",
    "Item",
    "Excluded",
    "Rejected",
    "ReleasedTraces",
    "Skipped",
    "outcome_key",
    "SourceAdapter",
    "count_rejections",
    "read_classification_csv",
    "read_headqa",
    "read_image_folder",
    "read_medmcqa",
    "read_medqa",
    "read_medxpertqa",
    "read_mimic_cxr",
    "read_mmlu_pro",
    "read_nejm",
    "read_pmc_vqa",
    "read_released_traces",
    "read_slake",
    "read_source",
    "read_vqa_rad",
    "register_source",
]
