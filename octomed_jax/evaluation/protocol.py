"""The paper's evaluation protocol and its reported OctoMed-7B scores, keyed by benchmark name.

docs/paper.md, "Evaluation protocol": every score is the mean over 5 seeds, sampling at temperature 0.6 with
top-p 0.95, at most 8,192 new tokens and at most 10 images per question; MedQA is reported as a majority vote
over 10 samples. `PAPER` is that protocol and the default of `python -m octomed_jax.evaluate` and
`evaluation.suite.evaluate_benchmarks`; `QUICK` is one seed without majority voting, for smoke checks.

How a benchmark's reported score and a category mean are computed (as the paper's Table 2):
- a benchmark with a majority of k (MedQA: 10) draws k samples per question and seed; a seed's score is the
  accuracy of each question's majority answer; the reported score is the mean over seeds;
- any other benchmark: a seed's score is its accuracy (one sample per question); reported: the mean over seeds;
- a category mean is the unweighted mean of its benchmarks' reported scores (MedQA enters with its majority
  score): text (90.81 + 82.36 + 72.70 + 24.51 + 68.75) / 5 = 67.83.

`PAPER_TABLE` holds the paper's Table 2 for OctoMed-7B (docs/paper.md, "Benchmarks and scores"): its order,
the paper's benchmark names and scores, and the category means the paper reports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from octomed_jax.generation.sampler import SamplingParams

if TYPE_CHECKING:
    from data_pipeline.records import Question


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How benchmarks are sampled and scored.

    Attributes:
      params: sampling of one response (`n` samples per question and seed on benchmarks without a majority).
      seeds: one pass over the questions per seed; reported scores are means over them.
      majority: benchmark name -> k: k samples per question and seed, scored by majority vote.
      max_images: images kept per question (its first ones); None keeps all.
    """

    params: SamplingParams
    seeds: tuple[int, ...]
    majority: Mapping[str, int] = dataclasses.field(default_factory=dict)
    max_images: int | None = None

    def sampling(self, benchmark: str) -> tuple[SamplingParams, int | None]:
        """The sampling settings of `benchmark` and its majority k (None: scored by mean accuracy)."""
        k = self.majority.get(benchmark)
        return (dataclasses.replace(self.params, n=k) if k else self.params), k

    def override(
        self,
        *,
        params: SamplingParams | None = None,
        seeds: Sequence[int] | None = None,
        majority: Mapping[str, int] | None = None,
        max_images: int | None = None,
    ) -> Protocol:
        """This protocol with each given field replaced (None keeps the protocol's; `max_images=0` keeps all)."""
        return Protocol(
            params=(params if params is not None else self.params).validate(),
            seeds=tuple(seeds) if seeds is not None else self.seeds,
            majority=dict(majority) if majority is not None else self.majority,
            max_images=self.max_images if max_images is None else (max_images or None),
        )

    def to_json(self) -> dict[str, Any]:
        return {"sampling": dataclasses.asdict(self.params), "seeds": list(self.seeds),
                "majority": dict(self.majority), "max_images": self.max_images}


PAPER = Protocol(
    params=SamplingParams(temperature=0.6, top_p=0.95, max_new_tokens=8192),
    seeds=(0, 1, 2, 3, 4),
    majority={"medqa": 10},
    max_images=10,
)
QUICK = Protocol(params=PAPER.params, seeds=(0,), majority={}, max_images=PAPER.max_images)
PROTOCOLS = {"paper": PAPER, "quick": QUICK}


@dataclasses.dataclass(frozen=True)
class PaperScore:
    """One benchmark of the paper's Table 2: its category, the paper's name for it, OctoMed-7B's score (%)."""

    category: str
    title: str
    score: float


# docs/paper.md, "Benchmarks and scores", in the paper's order; MedQA's score is its majority vote of 10.
PAPER_TABLE: dict[str, PaperScore] = {
    "medqa": PaperScore("text", "MedQA", 90.81),
    "headqa": PaperScore("text", "HeadQA", 82.36),
    "medmcqa": PaperScore("text", "MedMCQA", 72.70),
    "medxpertqa_text": PaperScore("text", "MedXpertQA-Text", 24.51),
    "mmlu_pro_health": PaperScore("text", "MMLU-Pro (Health)", 68.75),
    "mmmu_pro_health": PaperScore("mm_reasoning", "MMMU-Pro (Health)", 42.52),
    "nejm": PaperScore("mm_reasoning", "NEJM Image Challenge", 61.14),
    "pmc_vqa": PaperScore("mm_reasoning", "PMC-VQA", 61.13),
    "medxpertqa_mm": PaperScore("mm_reasoning", "MedXpertQA-MM", 36.65),
    "brain_tumor": PaperScore("mm_classification", "Brain Tumor", 80.86),
    "coronahack": PaperScore("mm_classification", "CoronaHack", 71.22),
    "aptos": PaperScore("mm_classification", "APTOS", 75.43),
    "messidor2": PaperScore("mm_classification", "MESSIDOR-2", 55.20),
    "bcss": PaperScore("mm_classification", "BCSS", 53.72),
}
# The category means the paper reports (to two decimals); `metrics.summarize` over PAPER_TABLE gives them.
PAPER_CATEGORY_MEANS = {"text": 67.83, "mm_reasoning": 50.36, "mm_classification": 67.29}


def cap_images(questions: Sequence[Question], max_images: int | None) -> tuple[list[Question], list[str]]:
    """Keeps each question's first `max_images` images (None: all).

    Returns:
      (the questions in order, the ids of those that had more and were cut).
    """
    if max_images is None:
        return list(questions), []
    out, capped = [], []
    for q in questions:
        if len(q.images) > max_images:
            capped.append(q.id)
            q = dataclasses.replace(q, images=tuple(q.images[:max_images]))
        out.append(q)
    return out, capped


def parse_majority(items: Sequence[str]) -> dict[str, int]:
    """`["medqa=10"]` -> {"medqa": 10} (the `--majority` flag).

    Raises:
      ValueError: an item that is not `name=k` with k >= 1.
    """
    out = {}
    for item in items:
        name, _, k = item.partition("=")
        if not name or not k.isdigit() or int(k) < 1:
            raise ValueError(f"--majority: {item!r} is not benchmark=k with k >= 1 (e.g. medqa=10)")
        out[name.strip()] = int(k)
    return out


__all__ = [
    "PAPER",
    "PAPER_CATEGORY_MEANS",
    "PAPER_TABLE",
    "PROTOCOLS",
    "QUICK",
    "PaperScore",
    "Protocol",
    "cap_images",
    "parse_majority",
]
