"""The paper's benchmarks by category, each read through a `data_pipeline` source adapter from local files.

Each `Benchmark` names its adapter, its default place under `--data_dir` and the adapter options that pick
the evaluation split. Nothing is downloaded: put the public release at the default path (or pass another
`data_dir`). Default layouts, relative to `data_dir`:

| benchmark | path | what is there |
|---|---|---|
| medqa | `medqa/` | `test.jsonl` (US, 5 options) |
| headqa | `headqa/` | `test_HEAD_EN.json` (text questions kept) |
| medmcqa | `medmcqa/` | `dev.json` (original release, `cop` 1-based; the test split is unlabelled) |
| medxpertqa_text, medxpertqa_mm | `medxpertqa/` | `Text/test.jsonl`, `MM/test.jsonl`, `images/` |
| mmlu_pro_health | `mmlu_pro/` | `test-*.parquet` (health category kept) |
| mmmu_pro_health | `mmmu_pro/` | `test.jsonl` in the NEJM-style generic layout (question, options, answer, images) |
| nejm | `nejm/` | `test.jsonl` + images |
| pmc_vqa | `pmc_vqa/` | `test_clean.csv` (or `test.csv`) + `images/` |
| brain_tumor | `brain_tumor/Testing/` | one folder per class |
| coronahack | `coronahack/test/` | one folder per class |
| aptos | `aptos/` | `test.csv` (`id_code`, `diagnosis`) + `test_images/*.png` |
| messidor2 | `messidor2/test/` | one folder per DR grade 0..4 |
| bcss | `bcss/test/` | one folder per tissue class |
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from data_pipeline.records import Question
from data_pipeline.sources import SOURCES, count_rejections

TEXT, MM_REASONING, CLASSIFICATION = "text", "mm_reasoning", "mm_classification"
CATEGORIES = (TEXT, MM_REASONING, CLASSIFICATION)
CATEGORY_TITLES = {TEXT: "Text", MM_REASONING: "MM reasoning", CLASSIFICATION: "MM classification"}

DR_GRADES = {"0": "No DR", "1": "Mild", "2": "Moderate", "3": "Severe", "4": "Proliferative DR"}


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One evaluation set.

    Attributes:
      name: registry key.
      title: column title in the Markdown table.
      category: "text", "mm_reasoning" or "mm_classification".
      source: the `data_pipeline.sources` adapter.
      path: default location relative to `--data_dir`.
      options: adapter keyword arguments (split, image layout, label names).
      text_only: keep only questions without images (HeadQA is a text benchmark in the paper).
    """

    name: str
    title: str
    category: str
    source: str
    path: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    text_only: bool = False

    def load(
        self, data_dir: str, *, limit: int | None = None, path: str | None = None
    ) -> tuple[list[Question], Counter[str]]:
        """Reads the questions from `data_dir/self.path` (or `path`).

        Returns:
          The questions (the first `limit` if given) and the adapter's rejection counts.

        Raises:
          FileNotFoundError: naming the missing path (nothing is downloaded).
        """
        where = path or os.path.join(data_dir, self.path)
        rejected: Counter[str] = Counter()
        out: list[Question] = []
        # The adapter itself, not `read_source`: classification options carry their own `name=`.
        for q in count_rejections(SOURCES[self.source].read(where, **self.options), rejected):
            question = q.question if hasattr(q, "responses") else q  # released traces carry a question
            if self.text_only and question.images:
                continue
            out.append(question)
            if limit is not None and len(out) >= limit:
                break
        return out, rejected


def _image_folder(name: str, title: str, path: str, **options: Any) -> Benchmark:
    return Benchmark(name, title, CLASSIFICATION, "image_folder", path, {"name": name, "split": "test", **options})


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        # Text.
        Benchmark("medqa", "MedQA", TEXT, "medqa", "medqa", {"split": "test"}),
        Benchmark("headqa", "HeadQA", TEXT, "headqa", "headqa", {"split": "test"}, text_only=True),
        Benchmark("medmcqa", "MedMCQA", TEXT, "medmcqa", "medmcqa", {"split": "validation"}),
        Benchmark("medxpertqa_text", "MedXpertQA", TEXT, "medxpertqa_text", "medxpertqa", {"split": "test"}),
        Benchmark("mmlu_pro_health", "MMLU-Pro (Health)", TEXT, "mmlu_pro", "mmlu_pro", {"split": "test"}),
        # Multimodal reasoning.
        Benchmark("mmmu_pro_health", "MMMU-Pro (Health)", MM_REASONING, "nejm", "mmmu_pro", {"split": "test"}),
        Benchmark("nejm", "NEJM", MM_REASONING, "nejm", "nejm", {"split": "test"}),
        Benchmark("pmc_vqa", "PMC-VQA", MM_REASONING, "pmc_vqa", "pmc_vqa", {"split": "test"}),
        Benchmark("medxpertqa_mm", "MedXpertQA-MM", MM_REASONING, "medxpertqa_mm", "medxpertqa", {"split": "test"}),
        # Multimodal classification.
        _image_folder("brain_tumor", "Brain Tumor", "brain_tumor/Testing"),
        _image_folder("coronahack", "CoronaHack", "coronahack/test"),
        Benchmark(
            "aptos",
            "APTOS",
            CLASSIFICATION,
            "classification_csv",
            "aptos",
            {
                "name": "aptos",
                "split": "test",
                "image_column": "id_code",
                "label_column": "diagnosis",
                "image_dir": "test_images",
                "image_suffix": ".png",
                "label_names": DR_GRADES,
            },
        ),
        _image_folder("messidor2", "MESSIDOR-2", "messidor2/test", class_names=DR_GRADES),
        _image_folder("bcss", "BCSS", "bcss/test"),
    )
}


def select(spec: str | Sequence[str]) -> list[Benchmark]:
    """Benchmarks by name or category ("all", "text", "mm_reasoning", "mm_classification"), in table order.

    Raises:
      KeyError: an unknown name (the message lists the known ones).
    """
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    chosen: list[str] = []
    for n in names:
        if n == "all":
            chosen += list(BENCHMARKS)
        elif n in CATEGORIES:
            chosen += [b.name for b in BENCHMARKS.values() if b.category == n]
        elif n in BENCHMARKS:
            chosen.append(n)
        else:
            raise KeyError(f"unknown benchmark {n!r}; known: {sorted(BENCHMARKS)} or a category {CATEGORIES} or 'all'")
    order = list(BENCHMARKS)
    return [BENCHMARKS[n] for n in sorted(set(chosen), key=order.index)]


__all__ = ["BENCHMARKS", "CATEGORIES", "CATEGORY_TITLES", "Benchmark", "select"]
