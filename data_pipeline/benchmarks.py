"""The paper's benchmarks by category, each read through a `data_pipeline` source adapter from local files.

The one registry of evaluation sets (pure data, no JAX): `python -m octomed_jax.evaluate` scores them
(`octomed_jax.evaluation.benchmarks` re-exports this module) and the build decontaminates training against
them (`recipe.decontamination.benchmarks`). Classification sets take their class names from
`data_pipeline.labels`, as the training sources do.

Each `Benchmark` names its adapter, its default place under the benchmark folder (`--data_dir` of
`evaluate`, `recipe.decontamination.benchmark_dir` of the build; both `data/benchmarks` by default) and the
adapter options that pick the evaluation split. Nothing is downloaded: put the public release at the default
path (or pass another folder). Default layouts, relative to that folder:

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
| coronahack | `coronahack/` | Kaggle release: `Chest_xray_Corona_Metadata.csv` rows of `Dataset_type` TEST + images |
| aptos | `aptos/` | `test.csv` (`id_code`, `diagnosis`) + `test_images/*.png` |
| messidor2 | `messidor2/test/` | one folder per DR grade 0..4 |
| bcss | `bcss/test/` | one folder per tissue class |
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from data_pipeline.labels import label_names
from data_pipeline.records import Question
from data_pipeline.sources import SOURCES, ImageSettings, count_rejections
from data_pipeline.sources.classification import CORONAHACK_RELEASE

TEXT, MM_REASONING, CLASSIFICATION = "text", "mm_reasoning", "mm_classification"
CATEGORIES = (TEXT, MM_REASONING, CLASSIFICATION)
CATEGORY_TITLES = {TEXT: "Text", MM_REASONING: "MM reasoning", CLASSIFICATION: "MM classification"}


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

    def where(self, data_dir: str) -> str:
        """The benchmark's files: `data_dir/self.path`."""
        return os.path.join(data_dir, self.path)

    def questions(
        self,
        data_dir: str,
        *,
        path: str | None = None,
        images: ImageSettings | None = None,
        rejected: Counter[str] | None = None,
    ) -> Iterator[Question]:
        """Streams the questions from `data_dir/self.path` (or `path`).

        Args:
          data_dir: the benchmark folder.
          path: read here instead of `data_dir/self.path`.
          images: image checks for adapters that read images (None: the adapter's defaults).
          rejected: gains the adapter's rejection counts.

        Raises:
          FileNotFoundError: naming the missing path (nothing is downloaded).
        """
        read = SOURCES[self.source].read
        options = dict(self.options)
        params = inspect.signature(read).parameters.values()
        if images is not None and any(p.name == "images" or p.kind is p.VAR_KEYWORD for p in params):
            options["images"] = images
        # The adapter itself, not `read_source`: classification options carry their own `name=`.
        items = read(path or self.where(data_dir), **options)
        for q in count_rejections(items, Counter() if rejected is None else rejected):
            question = q.question if hasattr(q, "responses") else q  # released traces carry a question
            if not (self.text_only and question.images):
                yield question

    def load(
        self, data_dir: str, *, limit: int | None = None, path: str | None = None
    ) -> tuple[list[Question], Counter[str]]:
        """Reads the questions from `data_dir/self.path` (or `path`).

        Returns:
          The questions (the first `limit` if given) and the adapter's rejection counts.

        Raises:
          FileNotFoundError: naming the missing path (nothing is downloaded).
        """
        rejected: Counter[str] = Counter()
        out = list(itertools.islice(self.questions(data_dir, path=path, rejected=rejected), limit))
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
        Benchmark(
            "coronahack", "CoronaHack", CLASSIFICATION, "classification_csv", "coronahack",
            {**CORONAHACK_RELEASE, "split": "test"},
        ),
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
                "label_names": label_names("aptos"),
            },
        ),
        _image_folder("messidor2", "MESSIDOR-2", "messidor2/test", class_names=label_names("messidor2")),
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


__all__ = [
    "BENCHMARKS",
    "CATEGORIES",
    "CATEGORY_TITLES",
    "CLASSIFICATION",
    "MM_REASONING",
    "TEXT",
    "Benchmark",
    "select",
]
