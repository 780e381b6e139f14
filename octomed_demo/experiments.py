"""The paper's experiments in miniature: every ablation arm of `configs/` on the demo's synthetic world.

    python -m octomed_demo.experiments --suite=paper --scale=demo [--quick] [--workdir=runs/paper]
        [--only=EXPERIMENT_OR_ARM,...] [--config.x.y=v ...]

Each arm is the real ablation config (`configs/format_cot.py`, `configs/traces_4.py`, ...) passed through ONE
function, `demo_scale`, which swaps what only exists at the real scale for the demo's and keeps the rest, the
arm's lever (`configs.experiments.EXPERIMENTS`) included. `--config.x.y=v` overrides fields of the scale config
(`configs/demo.py`) before it is applied, e.g. `--config.eval.max_questions=20`; `--steps=N` sets every arm's
training length (default `PAPER_STEPS`, `QUICK_STEPS` with `--quick`). Each arm trains in
`<workdir>/<arm>/`, is evaluated on the same held-out questions of every category of the world (so the source
experiment sees what a source does to the other categories) and writes `<workdir>/<arm>/arm_report.json`; a
rerun skips the arms with a report and resumes an interrupted arm from its last checkpoint. The suite then writes
`<workdir>/paper_report.{md,png}`: per experiment, our numbers per arm beside the paper's (`PAPER_NUMBERS`, from
docs/experiments.md) and whether each of the paper's findings (`CLAIMS`) points the same way here.

What the miniature changes besides the scale (docs/experiments.md, "The experiments in miniature"):
- every arm trains the scale config's fixed number of steps (equal compute), not its exact epochs: at the
  world's size an epoch is a few steps. The traces experiment (`EPOCH_EXPERIMENTS`) is the exception: the paper
  compares its arms at epochs (1 trace x 3 epochs, 4 traces x 1 epoch, 16 traces x 3 epochs), so each of its arms
  trains exact epochs to the point the paper reports (`PAPER_EPOCHS`), evaluated at each epoch's end, on a world
  with a larger text split (`EPOCH_WORLD_SCALE`) so that an epoch is tens of steps; `--quick` trains them fixed
  steps;
- the filter experiment is also read at mid-training (`EARLY_EXPERIMENTS`): the paper's finding is about early
  training;
- teachers are demo teachers of two styles (`TEACHER_STYLES`), a reasoning-style one for DeepSeek-R1 and an
  instruction-style one for GPT-4o (and a weaker "student" for the student pass-rate filter), differing in
  their error rate per category and, on scored text questions, in whether they write the steps; the judge
  filter's endpoint is a demo judge that rates difficulty by the facts a question takes;
- the world is the demo's with too-easy image + text questions added (`SUITE_WORLD`), for the filters;
- an arm whose filter needs an endpoint the world has no stand-in for is listed as not run (none today).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags

from configs import base, full_mix
from configs.experiments import EXPERIMENTS, diff
from octomed_demo import world

SUITES = ("paper",)
SCALES = ("demo",)  # the scale config's name in configs/
ARM_REPORT = "arm_report.json"
REPORT = "paper_report"  # <workdir>/paper_report.{md,png}
SCALE_FILE = "suite_scale.json"  # the scale config the workdir's arms ran at
BEFORE = "before_eval.json"  # the untrained student's eval, shared by every arm (same init, same questions)
TIE_POINTS = 5.0  # a difference of at most 2 of the demo's 40 questions per category reads as "flat"

# Which category each real source's questions are in: an arm keeps the demo world's source of those categories.
SOURCE_CATEGORY = {
    **{s: "text" for s in full_mix.TEXT_SOURCES},
    **{s: "mm_reasoning" for s in full_mix.MM_REASONING_SOURCES},
    **{s: "mm_classification" for s in full_mix.CLASSIFICATION_SOURCES},
}

# The demo teacher standing in for each real endpoint (by its `name`): (demo name, error rate per category, how it
# writes a scored sum: `world.STYLES`). The reasoning-style teacher (R1) is strong on text, adds the points step by
# step, and cannot read images; the instruction-style one (GPT-4o) reads images, is weaker on text and states a
# total without the steps; the student (the pass-rate filter's endpoint) is weaker than both.
TEACHER_STYLES: dict[str, tuple[str, dict[str, float], str]] = {
    base.deepseek_r1().name: ("demo-reasoning", {"text": 0.2, "mm_reasoning": 0.8, "mm_classification": 0.8},
                              "reasoning"),
    base.gpt_4o().name: ("demo-instruction", {"text": 0.6, "mm_reasoning": 0.35, "mm_classification": 0.35},
                         "brief"),
    base.student_endpoint().name: ("demo-student", {"text": 0.7, "mm_reasoning": 0.7, "mm_classification": 0.7},
                                   "reasoning"),
    # The judge filter's endpoint: rates difficulty by the facts a question takes (`world.judge_difficulty`: a
    # stated answer 1, an image + text question 5), misjudging 10% of questions by 2 points.
    base.judge_endpoint().name: ("demo-judge", {"text": 0.1, "mm_reasoning": 0.1, "mm_classification": 0.1},
                                 "judge"),
}

# The suite's world: the demo's, with 40% of the image + text train questions too easy (`world.STATED`: the stem
# states the answer, so every teacher gets all 16 samples right; what the pass-rate filters drop). The demo keeps
# its own world. Text questions that need several steps (`world.SCORED_STEM`, `scored_findings=3`: three findings'
# points added, held-out questions on combinations never trained on) are an override, not the default: the demo's
# 4-layer student did not learn to copy the findings within 300 steps, text-only or mixed (docs/experiments.md).
SUITE_WORLD = {"mm_reasoning": {"stated_fraction": 0.4}}
SCORED_MAX_NEW_TOKENS = 64  # a scored trace and its answer line: ~50 tokens (the demo's longest, ~40)

# Every field `demo_scale` may change (dotted prefixes); all others are the real arm's (tests/demo/
# test_experiments_suite.py). The training half is the scale config's: the ablations' batch of 128 examples,
# 1% warmup, exact epochs and epoch-end evaluation are for a 7B student at a learning rate of 5e-5.
SCALE_FIELDS = (
    "plugins",
    "recipe.sources",  # the world's source of each category the arm's sources are in
    "recipe.teachers",  # the demo teacher of each endpoint's style (`TEACHER_STYLES`)
    "recipe.filters.student_pass_rate.endpoint",  # the demo student
    "recipe.filters.judge.endpoint",  # the demo judge
    "recipe.source_root",
    "recipe.decontamination.enabled",  # the world's splits are disjoint by construction
    "recipe.concurrency",
    "recipe.images.max_pixels",
    "recipe.out_dir",  # "" -> <arm workdir>/data
    "init_from", "model", "mesh", "rules", "data", "optim", "train", "checkpoint", "eval", "export", "demo",
)

EARLY_EXPERIMENTS = ("filter",)  # also evaluated at mid-training: the paper's finding is about early training
# Experiments compared at the paper's epochs, not at equal steps: each arm trains exact epochs (`train.num_steps=-1`)
# up to the epoch the paper reports its number at, evaluated at every epoch's end (the real arms'
# `eval.at_epoch_ends`), on the suite's world with a text split `EPOCH_WORLD_SCALE` times the scale config's, so
# that one epoch of one trace per question is ~66 steps (1,600 questions drawn, 1,324 distinct): traces_1 199 steps,
# traces_4 257, traces_16 769 (16 samples keep at most the 4 wordings of a text trace: traces_4's data, 3 epochs).
EPOCH_EXPERIMENTS = ("traces",)
PAPER_EPOCHS = {"traces_1": 3, "traces_4": 1, "traces_16": 3}
EPOCH_WORLD_SCALE = {"text": 5}  # train questions drawn, times the scale config's
QUICK_ARMS = ("format_cot", "format_direct", "traces_1", "traces_16")
# Steps per arm: 300, where the demo's student has learned its image categories (text by 300-400). The default
# suite's 15 arms took 3,207 s on a quiet 2-core machine (2026-12-01, 155-210 s per 300-step arm, traces_16's 769
# steps 499 s; docs/experiments.md); quick 570 s.
PAPER_STEPS = 300
QUICK_STEPS = 200
QUICK_EVAL_QUESTIONS = 20

# The paper's numbers per arm and category (docs/experiments.md; docs/paper.md, "Recipe levers"): the format
# ablation's categories, and MedQA for the traces ablation (traces_4 at 1 epoch, the others at 3).
PAPER_NUMBERS: dict[str, dict[str, dict[str, float]]] = {
    "format": {
        "format_cot": {"text": 52.19, "mm_reasoning": 38.15, "mm_classification": 63.33},
        "format_direct": {"text": 29.23, "mm_reasoning": 23.08, "mm_classification": 65.46},
    },
    "traces": {"traces_1": {"text": 75.16}, "traces_4": {"text": 76.50}, "traces_16": {"text": 85.01}},
}


@dataclasses.dataclass(frozen=True)
class Claim:
    """One finding of the paper as a comparison of our arms.

    Attributes:
      experiment: the `EXPERIMENTS` name.
      finding: the paper's words (docs/experiments.md).
      arm: the arm the finding favours.
      others: the arms it is compared with (the best of them counts).
      category: a category, or "mean" (the unweighted mean over the three).
      relation: ">" (ahead by more than `TIE_POINTS`), ">=" (not behind by more than it) or "=" (within it).
      point: "final" (after training) or "early" (mid-training, `EARLY_EXPERIMENTS`).
    """

    experiment: str
    finding: str
    arm: str
    others: tuple[str, ...]
    category: str
    relation: str = ">"
    point: str = "final"


_SINGLE = ("text_only", "mm_reasoning_only", "classification_only")
_OWN = {"text": "text_only", "mm_reasoning": "mm_reasoning_only", "mm_classification": "classification_only"}
_FILTERS = ("filter_teacher_pass_rate", "filter_student_pass_rate", "filter_judge")
CLAIMS: tuple[Claim, ...] = (
    *(Claim("source", f"a source helps the tasks it resembles most ({c})", _OWN[c],
            tuple(a for a in _SINGLE if a != _OWN[c]), c) for c in base.CATEGORIES),
    Claim("source", "text is the strongest single source", "text_only", _SINGLE[1:], "mean"),
    *(Claim("source", f"the mix does not hurt any category ({c})", "source_mix", _SINGLE, c, ">=")
      for c in base.CATEGORIES),
    Claim("format", "CoT lifts text (52.19 vs 29.23)", "format_cot", ("format_direct",), "text"),
    Claim("format", "CoT lifts multimodal reasoning (38.15 vs 23.08)", "format_cot", ("format_direct",),
          "mm_reasoning"),
    Claim("format", "direct is slightly ahead on classification (65.46 vs 63.33)", "format_direct", ("format_cot",),
          "mm_classification", ">="),
    Claim("traces", "16 traces beat 1 (peak 85.01 vs 75.16)", "traces_16", ("traces_1",), "text"),
    Claim("traces", "4 traces x 1 epoch beat 1 trace x 3 epochs (76.50 vs 75.16)", "traces_4",
          ("traces_1",), "text"),
    Claim("teacher", "R1 gives larger gains than GPT-4o on text", "teacher_r1", ("teacher_gpt4o",), "text"),
    *(Claim("filter", f"{f[7:]} makes early training more sample-efficient", f, ("filter_none",), "mm_reasoning",
            point="early") for f in _FILTERS),
    Claim("filter", "unfiltered data reaches the judge filter's peak", "filter_none", ("filter_judge",),
          "mm_reasoning", "="),
)


class SuiteError(ValueError):
    """A suite argument names no experiment or arm; the message lists the known ones."""


# --- configs ------------------------------------------------------------------------------------------------------


def load_config(name: str) -> ml_collections.ConfigDict:
    """`configs/<name>.py`'s config."""
    return importlib.import_module(f"configs.{name}").get_config()


def demo_teacher(endpoint: Mapping[str, Any], category: str, scale: ml_collections.ConfigDict) -> dict[str, Any]:
    """The demo teacher standing in for a real endpoint in `category` (`TEACHER_STYLES`), with the endpoint's
    sample count `n` and the scale config's truncation rate and seed for that category."""
    if endpoint["name"] not in TEACHER_STYLES:
        raise KeyError(f"no demo teacher style for endpoint {endpoint['name']!r}; add it to "
                       "octomed_demo.experiments.TEACHER_STYLES")
    name, error_rates, style = TEACHER_STYLES[endpoint["name"]]
    extra = scale.recipe.teachers[category].extra_body
    settings = world.teacher_settings(error_rate=error_rates[category], truncation_rate=extra.truncation_rate,
                                      seed=extra.seed, n=int(endpoint["n"]), style=style)
    return {**settings, "name": name}


def demo_scale(arm: ml_collections.ConfigDict, scale: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A real ablation arm at the demo's scale: the fields of `SCALE_FIELDS` changed, every other field kept.

    - sources: each real source becomes the scale config's world source of its category (`SOURCE_CATEGORY`),
      so `text_only` keeps the world's text questions and `filter_none` its image + text ones;
    - teachers: each category's endpoint becomes the demo teacher of its style (`demo_teacher`), as does the
      student pass-rate filter's endpoint, and the judge's the demo judge;
    - the world's recipe settings (source root, no decontamination, concurrency, image size, out_dir) and the
      whole training half (model, tokenizer, data, optimizer, steps, checkpoints, eval) are the scale config's.

    Args:
      arm: a real ablation config (`configs/<arm>.py`).
      scale: the scale config (`configs/demo.py`, overrides applied).

    Returns:
      A new config; `arm` and `scale` are not changed.
    """
    config = ml_collections.ConfigDict(arm.to_dict())
    s = ml_collections.ConfigDict(scale.to_dict())
    r, sr = config.recipe, s.recipe
    categories = {SOURCE_CATEGORY[k] for k in r.sources}
    r.sources = ml_collections.ConfigDict({k: v for k, v in sr.sources.items() if v.options.category in categories})
    r.teachers = ml_collections.ConfigDict({c: demo_teacher(t, c, s) for c, t in r.teachers.items()})
    # The student and the judge see the filtered questions, here image + text: their style's rate for that category.
    for name in ("student_pass_rate", "judge"):
        r.filters[name].endpoint = demo_teacher(r.filters[name].endpoint, "mm_reasoning", s)
    r.source_root, r.decontamination.enabled = sr.source_root, sr.decontamination.enabled
    r.concurrency, r.images.max_pixels, r.out_dir = sr.concurrency, sr.images.max_pixels, sr.out_dir
    config.plugins = s.plugins
    for key in ("init_from", "model", "mesh", "rules", "data", "optim", "train", "checkpoint", "eval", "export",
                "demo"):
        config[key] = s[key]
    return config


def missing_endpoints(config: ml_collections.ConfigDict) -> list[str]:
    """The enabled filters whose endpoint the world has no stand-in for (not a demo teacher)."""
    f = config.recipe.filters
    return [name for name in ("judge", "student_pass_rate") if f[name].enabled and f[name].endpoint.kind !=
            world.TEACHER_KIND]


def early_step(config: ml_collections.ConfigDict) -> int:
    """The mid-training evaluation step of the `EARLY_EXPERIMENTS`."""
    return max(1, int(config.train.num_steps) // 2)


def with_world(recipe: ml_collections.ConfigDict, world_options: Mapping[str, Mapping[str, Any]]) -> None:
    """Updates, in place, the options of the recipe's world sources of each category in `world_options`."""
    for entry in recipe.sources.values():
        entry.options.update(world_options.get(entry.options.category, {}))


def epoch_world(recipe: ml_collections.ConfigDict) -> None:
    """The `EPOCH_EXPERIMENTS`' world, in place: each category's train split `EPOCH_WORLD_SCALE` times larger."""
    for entry in recipe.sources.values():
        factor = EPOCH_WORLD_SCALE.get(entry.options.category, 1)
        entry.options.num_train = int(entry.options.num_train) * factor


def arm_config(experiment: str, arm: str, scale: ml_collections.ConfigDict, *, by_epochs: bool = True
               ) -> ml_collections.ConfigDict:
    """The suite's config of one arm: `demo_scale` of the real arm, plus the mid-training evaluation; with
    `by_epochs`, an arm of the `EPOCH_EXPERIMENTS` trains exact epochs to its `PAPER_EPOCHS` on `epoch_world`."""
    real = load_config(arm)
    config = demo_scale(real, scale)
    if experiment in EARLY_EXPERIMENTS:
        config.eval.every = early_step(config)
    if by_epochs and experiment in EPOCH_EXPERIMENTS:
        epoch_world(config.recipe)
        config.train.num_steps = -1  # exact epochs, counted (the real arms')
        config.data.epochs = PAPER_EPOCHS[arm]
        config.eval.at_epoch_ends = bool(real.eval.at_epoch_ends)
    return config


def held_out_questions(scale: ml_collections.ConfigDict) -> list[Any]:
    """The held-out questions every arm is evaluated on: the test split of each category, kept apart from the
    largest train split any arm draws (`epoch_world`'s)."""
    recipe = ml_collections.ConfigDict(scale.recipe.to_dict())
    epoch_world(recipe)
    return world.held_out(recipe, limit=scale.eval.max_questions)


def suite_scale(scale: ml_collections.ConfigDict, *, quick: bool, steps: int | None = None
                ) -> ml_collections.ConfigDict:
    """The scale config as the suite runs it: the suite's world (`SUITE_WORLD`), `steps` training steps per arm
    (None: `PAPER_STEPS`, or `QUICK_STEPS` when `quick`), no HF export (the experiments score the checkpoint in
    process), room for scored text traces when a text source asks scored questions; `quick`: also at
    most `QUICK_EVAL_QUESTIONS` held-out questions per category."""
    s = ml_collections.ConfigDict(scale.to_dict())
    with_world(s.recipe, SUITE_WORLD)
    s.train.num_steps = steps or (QUICK_STEPS if quick else PAPER_STEPS)
    if any(e.options.get("scored_findings") for e in s.recipe.sources.values()):
        s.eval.max_new_tokens = max(int(s.eval.max_new_tokens), SCORED_MAX_NEW_TOKENS)
    s.export.hf = False
    s.demo.hf_check = False
    if quick:
        s.eval.max_questions = min(int(s.eval.max_questions), QUICK_EVAL_QUESTIONS)
    return s


def check_workdir(scale: ml_collections.ConfigDict, workdir: str) -> None:
    """Records the suite's scale config in `<workdir>/suite_scale.json`, or checks it against the one recorded:
    finished arms, the shared initialisation and the untrained student's evaluation are only valid under it.

    Raises:
      SuiteError: the workdir ran at another scale config (the fields that differ are named).
    """
    path = os.path.join(workdir, SCALE_FILE)
    if not os.path.exists(path):
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            f.write(scale.to_json(indent=2))
        return
    with open(path) as f:
        recorded = ml_collections.ConfigDict(json.load(f))
    changed = diff(ml_collections.ConfigDict(json.loads(scale.to_json())), recorded)  # both as JSON types
    if changed:
        raise SuiteError(f"{workdir} holds arms run at another scale config ({path}); differing fields: "
                         f"{', '.join(sorted(changed)[:8])}. Use a fresh --workdir, or the same --quick, --steps "
                         "and --config overrides")


def suite_arms(*, quick: bool, only: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(experiment, arm) in `EXPERIMENTS` order: every arm, or `QUICK_ARMS`, limited to `only` (experiment or
    arm names).

    Raises:
      SuiteError: a name of `only` is neither.
    """
    arms = [(e, a) for e, exp in EXPERIMENTS.items() for a in exp.arms if not quick or a in QUICK_ARMS]
    unknown = [n for n in only if n not in EXPERIMENTS and all(n != a for _, a in arms)]
    if unknown:
        raise SuiteError(f"--only names {unknown}: not an experiment ({', '.join(EXPERIMENTS)}) or an arm of this "
                         f"suite ({', '.join(a for _, a in arms)})")
    return [(e, a) for e, a in arms if not only or e in only or a in only]


def lever_summary(experiment: str, arm: str) -> str:
    """What the real arm sets in its experiment's lever, in a few words."""
    config = load_config(arm)
    r = config.recipe
    return {
        "source": lambda: ", ".join(c for c in base.CATEGORIES if c in {SOURCE_CATEGORY[k] for k in r.sources}),
        "format": lambda: "/".join(sorted(set(r.response_format.values()))),
        "traces": lambda: f"K={r.traces_per_question}",
        "teacher": lambda: r.teachers.text.name,
        "filter": lambda: ", ".join(f for f in ("teacher_pass_rate", "student_pass_rate", "judge")
                                    if r.filters[f].enabled) or "none",
    }[experiment]()


# --- running --------------------------------------------------------------------------------------------------


def run_arm(experiment: str, arm: str, config: ml_collections.ConfigDict, workdir: str, *, suite_dir: str,
            questions: Sequence[Any]) -> dict[str, Any]:
    """Builds, trains and evaluates one arm in `workdir` (resuming what is there); its report, also written as
    `<workdir>/arm_report.json`, or {"preempted": True} when training was interrupted.

    The student's initialisation (`<suite_dir>/init`) and its evaluation before training (`<suite_dir>/
    before_eval.json`) are shared by every arm: they depend only on the training half, the scale config's.
    """
    from octomed_demo import driver
    from octomed_jax.evaluation.report import write_json
    from octomed_jax.training.trainer import train

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    data_dir = driver.data_dir_of(config, workdir)
    manifest = driver.build_if_missing(config, data_dir, progress=False)
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.data_dir = data_dir
    config.init_from = driver.init_student(config, os.path.join(suite_dir, "init"))
    shared_before = os.path.join(suite_dir, BEFORE)
    if os.path.exists(shared_before):
        os.makedirs(os.path.join(workdir, driver.EVAL_DIR), exist_ok=True)
        shutil.copyfile(shared_before, driver.eval_path(workdir, 0))
        config.eval.at_start = False
    timings["build"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = train(config, workdir, evaluate_fn=driver.make_eval_hook(config, list(questions), workdir, timings, {}))
    if summary.get("preempted"):
        return {"preempted": True}
    timings["train"] = time.perf_counter() - t0 - timings.get("eval_before", 0.0) - timings.get("eval_after", 0.0)
    if not os.path.exists(shared_before):
        shutil.copyfile(driver.eval_path(workdir, 0), shared_before)
    end = int(summary["end_step"])

    def accuracies(step: int) -> dict[str, float]:
        cats = driver.load_eval(workdir, step)["summary"]["categories"]
        return {c: m["accuracy"] for c, m in sorted(cats.items())}

    early = None
    if experiment in EARLY_EXPERIMENTS:
        early = {"step": early_step(config), "categories": accuracies(early_step(config))}
    epochs = None
    if config.train.num_steps <= 0 and config.eval.at_epoch_ends:
        from octomed_jax.checkpoint import load_contract

        ends = load_contract(workdir).train.epoch_end_steps
        epochs = [{"epoch": e, "step": s, "categories": accuracies(s)} for e, s in enumerate(ends, start=1)]
    report = {
        "experiment": experiment,
        "arm": arm,
        "status": "done",
        "categories": driver.category_table(driver.load_eval(workdir, 0), driver.load_eval(workdir, end)),
        "early": early,
        "epochs": epochs,
        "traces": driver.trace_counts(manifest),
        "steps": end,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    write_json(report, os.path.join(workdir, ARM_REPORT))
    return report


def run_suite(scale: ml_collections.ConfigDict, workdir: str, *, quick: bool = False, only: Sequence[str] = (),
              steps: int | None = None) -> dict[str, Any]:
    """Runs the arms (finished ones skipped, an interrupted one resumed), then writes the report.

    Args:
      scale: the scale config (`configs/demo.py`, overrides applied); `suite_scale` is applied here.
      workdir: one folder per arm, the shared initialisation, the log file and the report.
      quick: `QUICK_ARMS`, shortened (`suite_scale`).
      only: experiment or arm names to run (empty: all of the suite).
      steps: training steps per arm (`suite_scale`).

    Returns:
      {"arms": {arm: its report}, "report": the Markdown path, "seconds": the suite's wall time}, or with
      "preempted": the arm interrupted (rerun the same command to resume).
    """
    from data_pipeline.plugins import load_plugins
    from octomed_demo import driver

    t_start = time.perf_counter()
    scale = suite_scale(scale, quick=quick, steps=steps)
    load_plugins(scale.get("plugins", ()))
    arms = suite_arms(quick=quick, only=only)
    check_workdir(scale, workdir)
    print(f"experiments: {len(arms)} arms into {workdir}; library logs go to "
          f"{driver.route_library_logs(workdir)}")
    questions = held_out_questions(scale)  # every category, the same for all
    results: dict[str, dict[str, Any]] = {}
    ran: list[float] = []
    for i, (experiment, arm) in enumerate(arms, start=1):
        arm_dir = os.path.join(workdir, arm)
        path = os.path.join(arm_dir, ARM_REPORT)
        head = f"[arm {i}/{len(arms)}] {arm} ({experiment})"
        config = arm_config(experiment, arm, scale, by_epochs=not quick)
        missing = missing_endpoints(config)
        if os.path.exists(path):
            with open(path) as f:
                results[arm] = json.load(f)
            print(f"{head}: finished earlier, skipped ({path})")
            continue
        if missing:
            reason = f"the demo world has no stand-in for the {', '.join(missing)} endpoint"
            results[arm] = {"experiment": experiment, "arm": arm, "status": "not run", "reason": reason}
            print(f"{head}: not run: {reason}")
            continue
        length = (f"{config.data.epochs} epoch(s), evaluated at each end" if config.train.num_steps <= 0
                  else f"{config.train.num_steps} steps")
        print(f"{head}: {length} ...")
        t0 = time.perf_counter()
        report = run_arm(experiment, arm, config, arm_dir, suite_dir=workdir, questions=questions)
        if report.get("preempted"):
            print(f"{head}: interrupted; checkpoint in {arm_dir}; rerun the same command to resume")
            return {"arms": results, "preempted": arm}
        results[arm] = report
        ran.append(time.perf_counter() - t0)
        left = sum(1 for _, a in arms[i:] if not os.path.exists(os.path.join(workdir, a, ARM_REPORT)))
        print(f"{head}: done in {ran[-1]:.0f}s; " + ", ".join(
            f"{c} {m['after']:.1f}%" for c, m in report["categories"].items())
            + f"; suite {time.perf_counter() - t_start:.0f}s, about {left * sum(ran) / len(ran):.0f}s left")
    md, png = write_report(results, workdir, title=f"paper suite, {'quick, ' if quick else ''}demo scale")
    seconds = time.perf_counter() - t_start
    print(f"report: {md}, {png}\nexperiments: total {seconds:.0f}s ({seconds / 60:.1f} min)")
    return {"arms": results, "report": md, "seconds": seconds}


# --- the report ------------------------------------------------------------------------------------------------


def accuracy(report: Mapping[str, Any], category: str, point: str = "final") -> float | None:
    """An arm's held-out accuracy (%) in a category (or "mean"), after training or at mid-training."""
    if report.get("status") != "done":
        return None
    if point == "early":
        values = (report.get("early") or {}).get("categories", {})
    else:
        values = {c: m["after"] for c, m in report["categories"].items()}
    if category == "mean":
        return sum(values.values()) / len(values) if values else None
    return values.get(category)


def judge_claim(claim: Claim, arms: Mapping[str, Mapping[str, Any]]) -> tuple[str, float | None]:
    """(verdict, our margin in points): "agrees", "flat" (within `TIE_POINTS` where the paper sees a gap),
    "inverted", "differs" (a gap where the paper sees none) or "not run"."""
    ours = accuracy(arms.get(claim.arm, {}), claim.category, claim.point)
    others = [accuracy(arms.get(a, {}), claim.category, claim.point) for a in claim.others]
    if ours is None or any(o is None for o in others):
        return "not run", None
    margin = ours - max(others)
    if claim.relation == "=":
        return ("agrees" if abs(margin) <= TIE_POINTS else "differs"), margin
    if claim.relation == ">=":
        return ("agrees" if margin >= -TIE_POINTS else "inverted"), margin
    if margin > TIE_POINTS:
        return "agrees", margin
    return ("flat" if margin >= -TIE_POINTS else "inverted"), margin


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report_markdown(arms: Mapping[str, Mapping[str, Any]], *, title: str) -> str:
    """The report: per experiment (every one of `EXPERIMENTS`), our accuracy per arm and category beside the
    paper's numbers, then each of the paper's findings with our margin and verdict."""
    cats = base.CATEGORIES
    verdicts = [judge_claim(c, arms)[0] for c in CLAIMS]
    counts = ", ".join(f"{verdicts.count(v)} {v}" for v in ("agrees", "flat", "inverted", "differs", "not run")
                       if v in verdicts)
    done = next((r for r in arms.values() if r.get("status") == "done"), None)
    lines = [f"# The paper's experiments in miniature ({title})", "",
             "Held-out accuracy (%) of the demo student per arm (the same questions for every arm); `paper`: the "
             "paper's number for that arm where docs/experiments.md gives one. Verdicts: a difference within "
             f"{TIE_POINTS:g} points is flat.", "", f"The paper's {len(CLAIMS)} findings here: {counts}."]
    if done:
        lines.append("Chance / untrained student: " + ", ".join(
            f"{c} {done['categories'][c]['chance']:.1f} / {done['categories'][c]['before']:.1f}"
            for c in cats if c in done["categories"]) + ".")
    lines.append("")
    for experiment, exp in EXPERIMENTS.items():
        lines += [f"## {experiment}", "", "| arm | lever | " + " | ".join(f"{c} | paper" for c in cats) + " |",
                  "|---|---|" + "---:|---:|" * len(cats)]
        not_run = []
        for arm in exp.arms:
            r = arms.get(arm, {})
            paper = PAPER_NUMBERS.get(experiment, {}).get(arm, {})
            done = r.get("status") == "done"
            if not done:
                not_run.append(f"`{arm}`: {r.get('reason', 'not in this run')}")
            cells = [f"{_fmt(accuracy(r, c)) if done else 'not run'} | {_fmt(paper.get(c))}" for c in cats]
            lines.append(f"| `{arm}` | {lever_summary(experiment, arm)} | " + " | ".join(cells) + " |")
        if not_run:
            lines += ["", "Not run: " + "; ".join(not_run) + "."]
        epochs = {a: arms[a]["epochs"] for a in exp.arms if arms.get(a, {}).get("epochs")}
        if epochs:
            lines += ["", "At each epoch's end (step), " + " / ".join(cats) + ": " + "; ".join(
                f"`{a}` " + ", ".join(f"epoch {p['epoch']} (step {p['step']}) " + " / ".join(
                    _fmt(p["categories"].get(c)) for c in cats) for p in points) for a, points in epochs.items()) + "."]
        early = {a: arms[a]["early"] for a in exp.arms if arms.get(a, {}).get("early")}
        if early:
            step = next(iter(early.values()))["step"]
            lines += ["", f"At mid-training (step {step}), " + " / ".join(cats) + ": " + "; ".join(
                f"`{a}` " + " / ".join(_fmt(accuracy(arms[a], c, "early")) for c in cats) for a in early) + "."]
        lines += ["", "| the paper's finding | category | point | ours (margin) | direction |",
                  "|---|---|---|---:|---|"]
        for claim in (c for c in CLAIMS if c.experiment == experiment):
            verdict, margin = judge_claim(claim, arms)
            vs = ", ".join(f"`{a}`" for a in claim.others)
            lines.append(f"| {claim.finding}: `{claim.arm}` {claim.relation} {vs} | {claim.category} | "
                         f"{claim.point} | {'-' if margin is None else f'{margin:+.1f}'} | {verdict} |")
        lines.append("")
    return "\n".join(lines)


def plot_report(arms: Mapping[str, Mapping[str, Any]], path: str) -> None:
    """One panel per experiment: accuracy per arm and category (bars), the paper's numbers as black marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = base.CATEGORIES
    colours = ("#4C72B0", "#DD8452", "#55A868")
    fig, axes = plt.subplots(1, len(EXPERIMENTS), figsize=(4.2 * len(EXPERIMENTS), 3.8), sharey=True)
    for ax, (experiment, exp) in zip(axes, EXPERIMENTS.items(), strict=True):
        names = list(exp.arms)
        width = 0.8 / len(cats)
        for j, c in enumerate(cats):
            xs = [i + (j - 1) * width for i in range(len(names))]
            ax.bar(xs, [accuracy(arms.get(a, {}), c) or 0.0 for a in names], width, color=colours[j],
                   label=c if experiment == next(iter(EXPERIMENTS)) else None)
            for x, a in zip(xs, names, strict=True):
                paper = PAPER_NUMBERS.get(experiment, {}).get(a, {}).get(c)
                if paper is not None:
                    ax.plot([x], [paper], marker="_", color="k", markersize=12, mew=2)
        ax.set_xticks(range(len(names)), [a.replace("_", "\n", 1) for a in names], fontsize=7)
        ax.set(title=experiment, ylim=(0, 100))
    axes[0].set_ylabel("held-out accuracy (%); paper: black marks")
    axes[0].legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(arms: Mapping[str, Mapping[str, Any]], workdir: str, *, title: str) -> tuple[str, str]:
    """`<workdir>/paper_report.md` and `.png` from the arms' reports; returns both paths."""
    base_path = os.path.join(workdir, REPORT)
    with open(base_path + ".md", "w") as f:
        f.write(report_markdown(arms, title=title))
    plot_report(arms, base_path + ".png")
    return base_path + ".md", base_path + ".png"


# --- command line ----------------------------------------------------------------------------------------------


def define_flags(flag_values: flags.FlagValues) -> None:
    """The suite's flags besides `--config` (the scale config's overrides, `--config.x.y=v`)."""
    flags.DEFINE_enum("suite", "paper", SUITES, "Which experiments: the paper's.", flag_values=flag_values)
    flags.DEFINE_enum("scale", "demo", SCALES, "The scale config (configs/NAME.py) every arm runs at.",
                      flag_values=flag_values)
    flags.DEFINE_bool("quick", False, f"Only {', '.join(QUICK_ARMS)}, {QUICK_STEPS} steps each.",
                      flag_values=flag_values)
    flags.DEFINE_integer("steps", None, f"Training steps per arm (default {PAPER_STEPS}; --quick {QUICK_STEPS}); "
                         f"at least 2 (a warmup step and a decay step). The arms of {', '.join(EPOCH_EXPERIMENTS)} "
                         "train the paper's epochs instead, except with --quick.", lower_bound=2,
                         flag_values=flag_values)
    flags.DEFINE_string("workdir", "runs/paper", "One folder per arm, and the report.", flag_values=flag_values)
    flags.DEFINE_list("only", [], "Experiments or arms to run (default: all of the suite).", flag_values=flag_values)


def scale_argument(argv: Sequence[str]) -> str:
    """The `--scale=NAME` of a command line (default "demo"): the config `--config.x.y=v` overrides apply to."""
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--scale=")), SCALES[0])


def main(config: ml_collections.ConfigDict, flag_values: flags.FlagValues) -> None:
    """Runs the suite; a persistent compilation cache in the workdir lets every arm reuse the first's programs."""
    import jax

    from data_pipeline.build import RecipeError
    from data_pipeline.plugins import PluginError
    from octomed_jax.training.trainer import SetupError

    workdir = flag_values.workdir
    if not jax.config.jax_compilation_cache_dir:  # one given by the environment is kept
        jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(workdir), "jax_cache"))
    try:
        result = run_suite(config, workdir, quick=flag_values.quick, only=flag_values.only, steps=flag_values.steps)
    except (PluginError, RecipeError, SetupError, SuiteError) as e:
        sys.exit(f"octomed_demo.experiments: {e}")
    except KeyboardInterrupt:
        sys.exit(f"octomed_demo.experiments: interrupted; rerun the same command to resume in {workdir}")
    if result.get("preempted"):
        sys.exit(0)


if __name__ == "__main__":
    from configs.cli import run_absl_cli

    run_absl_cli(main, program="octomed_demo.experiments", define_flags=define_flags,
                 default_config=scale_argument(sys.argv))
