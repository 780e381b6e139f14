"""The paper's ablations as run here: shared pieces of the arm configs, and the table of what each arm sets.

Not a config (no `get_config`): each arm is its own file (`configs/format_cot.py`, ...), built from `full_mix`
by one function of this module per experiment plus the arm's lever. `EXPERIMENTS` names, per experiment, the
fields each arm sets relative to `full_mix` (besides `recipe.name` and `recipe.out_dir`), and `tests/
test_experiments.py` checks every arm config against it. docs/experiments.md explains each experiment, the
paper's numbers and which choices are ours; docs/paper.md ("Recipe levers", "SFT hyperparameters") the facts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from configs import base, full_mix

# The ablations' training settings (docs/paper.md, "SFT hyperparameters": batch 128, warmup 1%).
ABLATION_BATCH_ROWS = 16  # packed rows of 8192 tokens at ~1,000 tokens per example: 16 x 8 = 128 examples
ABLATION_WARMUP_RATIO = 0.01
FORMAT_QUESTIONS = 100_000  # the format ablation's "same 100k subset"
TEACHER_QUESTIONS = 30_000  # the teacher ablation's "about 30k text examples" (K=1: one example per question)
FILTER_SOURCES = ("pmc_vqa",)  # the filter ablations are on PMC-VQA
TRACES_SOURCES = ("medqa",)  # the traces ablation is on MedQA

ABLATION_TRAINING = {"train.global_batch_rows": ABLATION_BATCH_ROWS, "optim.warmup_ratio": ABLATION_WARMUP_RATIO}
IGNORED = ("recipe.name", "recipe.out_dir")  # every arm sets its own; not a lever


def ablation_training(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The paper's ablation training: global batch 128 examples, warmup ratio 0.01 (the rest as `full_mix`).

    The paper's batch counts examples; ours counts packed rows of `data.seq_len` = 8192 tokens. At about 1,000
    tokens per example (a question ~71 tokens + template, a trace ~840: docs/paper.md, "Training data at
    scale") a row holds about 8 examples, so 16 rows ~ 128 examples, as `full_mix`'s 64 rows ~ 512. The exact
    number per row varies with the data (short direct answers pack many more).
    """
    config.train.global_batch_rows = ABLATION_BATCH_ROWS
    config.optim.warmup_ratio = ABLATION_WARMUP_RATIO
    return config


def arm(name: str, sources: Iterable[str] | None = None) -> ml_collections.ConfigDict:
    """`full_mix` renamed to `name` (its own out_dir), with the ablation training, on `sources` (None: all).

    Kept source entries are `full_mix`'s own (paths, adapters, options unchanged).
    """
    config = ablation_training(full_mix.get_config())
    r = config.recipe
    r.name = name
    r.out_dir = f"data/recipes/{name}"
    if sources is not None:
        keep = tuple(sources)
        r.sources = ml_collections.ConfigDict({k: v for k, v in r.sources.items() if k in keep})
    return config


def format_arm(name: str) -> ml_collections.ConfigDict:
    """Format ablation, both arms: a 100k-question subset of every source, one kept trace per question.

    K=1 in both arms: a direct target is the answer line alone, so every correct sample of a question gives
    the same string and one survives; K=1 keeps the CoT arm at the same examples and steps.
    """
    config = arm(name)
    config.recipe.subset.questions = FORMAT_QUESTIONS
    config.recipe.traces_per_question = 1
    return config


def traces_arm(name: str, k: int) -> ml_collections.ConfigDict:
    """Traces ablation: MedQA alone, K of 16 sampled, 3 epochs (`full_mix`'s), evaluated at each epoch's end."""
    config = arm(name, TRACES_SOURCES)
    config.recipe.traces_per_question = k
    config.eval.at_epoch_ends = True  # the 1-epoch and 3-epoch points of the paper's comparison
    return config


def teacher_arm(name: str) -> ml_collections.ConfigDict:
    """Teacher ablation: the text sources, a 30k-question subset, K=1 (about 30k examples), 1 epoch."""
    config = arm(name, full_mix.TEXT_SOURCES)
    config.recipe.subset.questions = TEACHER_QUESTIONS
    config.recipe.traces_per_question = 1
    config.data.epochs = 1
    return config


def filter_arm(name: str) -> ml_collections.ConfigDict:
    """Filter ablation: PMC-VQA alone, every filter off (each filter arm turns its own on)."""
    return arm(name, FILTER_SOURCES)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One ablation of the paper.

    Attributes:
      lever: field prefixes in which the arms differ from each other (and nothing else differs between them).
      arms: config name -> {dotted field: value} it sets relative to `full_mix`. A value that is a mapping
        sets every field below it; `recipe.sources` is the tuple of the source names kept.
    """

    lever: tuple[str, ...]
    arms: Mapping[str, Mapping[str, Any]]


def _sources(names: Iterable[str]) -> dict[str, Any]:
    return {"recipe.sources": tuple(sorted(names))}


_FORMAT = {**ABLATION_TRAINING, "recipe.subset.questions": FORMAT_QUESTIONS, "recipe.traces_per_question": 1}
_TRACES = {**ABLATION_TRAINING, **_sources(TRACES_SOURCES), "eval.at_epoch_ends": True}
_TEACHER = {
    **ABLATION_TRAINING,
    **_sources(full_mix.TEXT_SOURCES),
    "recipe.subset.questions": TEACHER_QUESTIONS,
    "recipe.traces_per_question": 1,
    "data.epochs": 1,
}
_FILTER = {**ABLATION_TRAINING, **_sources(FILTER_SOURCES)}

EXPERIMENTS: dict[str, Experiment] = {
    "source": Experiment(
        lever=("recipe.sources",),
        arms={
            "text_only": {**ABLATION_TRAINING, **_sources(full_mix.TEXT_SOURCES)},
            "mm_reasoning_only": {**ABLATION_TRAINING, **_sources(full_mix.MM_REASONING_SOURCES)},
            "classification_only": {**ABLATION_TRAINING, **_sources(full_mix.CLASSIFICATION_SOURCES)},
            "source_mix": ABLATION_TRAINING,  # every source, as full_mix
        },
    ),
    "format": Experiment(
        lever=("recipe.response_format",),
        arms={
            "format_cot": _FORMAT,  # full_mix's format is CoT already
            "format_direct": {**_FORMAT, "recipe.response_format": {c: "direct" for c in base.CATEGORIES}},
        },
    ),
    "traces": Experiment(
        lever=("recipe.traces_per_question",),
        arms={
            "traces_1": {**_TRACES, "recipe.traces_per_question": 1},
            "traces_4": {**_TRACES, "recipe.traces_per_question": 4},
            "traces_16": _TRACES,  # full_mix's K is 16 already
        },
    ),
    "teacher": Experiment(
        lever=("recipe.teachers.text",),
        arms={
            "teacher_r1": _TEACHER,  # full_mix's text teacher is R1 already
            "teacher_gpt4o": {**_TEACHER, "recipe.teachers.text": base.gpt_4o().to_dict()},
        },
    ),
    "filter": Experiment(
        lever=("recipe.filters",),
        arms={
            "filter_none": _FILTER,
            "filter_teacher_pass_rate": {**_FILTER, "recipe.filters.teacher_pass_rate.enabled": True},
            "filter_student_pass_rate": {**_FILTER, "recipe.filters.student_pass_rate.enabled": True},
            "filter_judge": {**_FILTER, "recipe.filters.judge.enabled": True},
        },
    ),
}


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf fields of a config (or of an `Experiment` arm's fields); `recipe.sources` -> its names.

    Source entries are not compared field by field: an arm keeps `full_mix`'s entries or drops them (tested).
    """
    if prefix == "recipe.sources":
        return {prefix: tuple(sorted(value))}
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list):
        value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return {prefix: value}


def arm_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """An `EXPERIMENTS` arm's fields as dotted leaves (a mapping value sets every field below its path)."""
    out: dict[str, Any] = {}
    for path, value in fields.items():
        out.update(flatten(value, path))
    return out


MISSING = "<missing>"  # a field one side of `diff` does not have


def diff(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict) -> dict[str, Any]:
    """Dotted fields where `config` differs from `reference` (its value, or `MISSING`), `IGNORED` left out."""
    a, b = flatten(config), flatten(reference)
    changed = (k for k in sorted(a.keys() | b.keys()) if a.get(k, MISSING) != b.get(k, MISSING))
    return {k: a.get(k, MISSING) for k in changed if k not in IGNORED}
