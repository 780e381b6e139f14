"""The demo driver: the recipe end to end on the synthetic world, one command, nothing to download.

`python -m octomed_demo` runs `run(config, workdir)`:

1. builds the accepted traces with `data_pipeline.build.run_build` into `<workdir>/data` when they are
   missing (teacher sampling, store, rejection sampling, K traces, shards, manifest);
2. trains with `training.trainer.train`, whose in-process eval hook scores the held-out split before
   the first step and after the last (`evaluation.run.evaluate_model`, greedy);
3. reloads the HF export with transformers (when torch is installed) and answers one held-out question;
4. prints a report (accuracy per category before/after against chance, traces, tokens, time) and writes
   it as `<workdir>/demo_report.json` with a PNG of the loss curve and the accuracies beside it.

Every figure of the report except the timings is a function of the config (seeded world, teacher, data
order and initialisation), so a rerun into a fresh workdir reproduces it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import ml_collections
from absl import logging

from data_pipeline.records import Question
from octomed_demo import world

REPORT_FIELDS = ("categories", "traces", "tokens_trained", "steps", "hf_check", "timings_s")


def data_dir_of(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Where the demo's traces live: `data.data_dir`, else `recipe.out_dir`, else `<workdir>/data`."""
    return config.data.data_dir or config.recipe.out_dir or os.path.join(workdir, "data")


def build_if_missing(config: ml_collections.ConfigDict, data_dir: str, *, progress: bool = True) -> dict[str, Any]:
    """Builds the recipe into `data_dir` unless its manifest is there; returns the manifest."""
    from data_pipeline.build import run_build
    from data_pipeline.writer import MANIFEST

    path = os.path.join(data_dir, MANIFEST)
    if os.path.exists(path):
        print(f"demo: using the traces already built in {data_dir}")
    else:
        print(f"demo: building the recipe {config.recipe.name!r} into {data_dir} (synthetic world and teacher)")
        run_build(config, out_dir=data_dir, source_root=config.recipe.source_root, progress=progress)
    with open(path) as f:
        return json.load(f)


def init_student(config: ml_collections.ConfigDict, path: str) -> str:
    """Writes the random student as an HF folder at `path`; training starts from it through `config.init_from`.

    The demo so takes the same `init_from` -> `load_hf` path as `full_mix` starts from the public
    checkpoint. The language model's kernels are drawn again from normal(0, 0.02) with a key of their own;
    that is the distribution `layers.dense` already uses, so only the draw differs, and the demo's measured
    figures are for this draw. The draw is seeded by `train.seed`.
    """
    import jax
    from flax import nnx

    from octomed_jax.contract import model_config_from
    from octomed_jax.hf import save_hf
    from octomed_jax.models.qwen2_5_vl import init_model

    if os.path.exists(os.path.join(path, "config.json")):
        return path
    model = init_model(model_config_from(config), seed=config.train.seed)
    state = nnx.state(model.language_model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    key = jax.random.key(config.train.seed + 1)
    for i, (name, var) in enumerate(sorted(flat.items(), key=lambda kv: str(kv[0]))):
        if name[-1] == "kernel":
            var.set_value(0.02 * jax.random.normal(jax.random.fold_in(key, i), var.get_value().shape,
                                                   var.get_value().dtype))
    nnx.update(model.language_model, nnx.from_flat_state(flat))
    save_hf(model, path)
    return path


def chance(category: str) -> float:
    """Accuracy (%) of guessing among the category's options."""
    return 100.0 / world.option_counts()[category]


def make_eval_hook(config: ml_collections.ConfigDict, questions: list[Question], results: dict[int, Any]) -> Any:
    """The trainer's `evaluate_fn`: `evaluate_model` on the held-out questions; keeps each step's metrics."""
    from octomed_jax import sharding as sharding_lib
    from octomed_jax.contract import RunContract
    from octomed_jax.evaluation.run import evaluate_model
    from octomed_jax.generation import SamplingParams
    from octomed_jax.training.trainer import flatten_eval_metrics

    e = config.eval
    params = SamplingParams(temperature=e.temperature, top_p=e.top_p, max_new_tokens=e.max_new_tokens)
    mesh = sharding_lib.make_mesh(dict(config.mesh))  # equal to the trainer's: same devices, same shape
    rules = tuple(tuple(r) for r in config.rules)
    contract = RunContract.from_config(config)  # the trainer's prompting and preprocessing, from the same fields

    def evaluate(model: Any, step: int) -> dict[str, float]:
        result = evaluate_model(model, questions, params, mesh=mesh, rules=rules, contract=contract, progress=True)
        results[step] = result
        return flatten_eval_metrics(result.metrics)

    return evaluate


def hf_check(hf_dir: str, question: Question, max_pixels: int, max_new_tokens: int) -> dict[str, Any] | None:
    """Reloads the HF export with transformers and answers `question` greedily; None without torch."""
    try:
        import torch
        import transformers
    except ImportError:
        print("demo: torch/transformers not installed; skipping the transformers reload of the export")
        return None
    import numpy as np

    from data_pipeline.answers import extract_answer
    from data_pipeline.formats import render_question
    from octomed_jax.data.tokenizer import load_tokenizer
    from octomed_jax.generation.prompts import question_prompt

    tokenizer = load_tokenizer(hf_dir)
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    prompt = question_prompt(tokenizer, question, max_pixels=max_pixels)  # our template, our image processing
    ids = torch.tensor(prompt.token_ids[None].astype(np.int64))
    inputs: dict[str, Any] = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == model.config.image_token_id).long(),  # 3-D M-RoPE, as in training
    }
    if prompt.pixel_values is not None:
        inputs["pixel_values"] = torch.tensor(prompt.pixel_values)
        inputs["image_grid_thw"] = torch.tensor(np.asarray(prompt.image_grid_thw))
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>")], pad_token_id=0)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    letter = extract_answer(text, question.options)
    return {
        "question_id": question.label,  # the release id; `key` is a content hash
        "question": render_question(question),
        "response": text,
        "answer": letter,
        "truth": question.answer,
        "correct": letter == question.answer,
    }


def category_table(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per category: chance, accuracy before and after (%), from two `evaluate_model` metrics."""
    out = {}
    for category, m in sorted(after["summary"]["categories"].items()):
        out[category] = {
            "chance": round(chance(category), 2),
            "before": before["summary"]["categories"][category]["accuracy"],
            "after": m["accuracy"],
            "questions": sum(after["benchmarks"][b]["num_questions"] for b in m["benchmarks"]),
            "unparseable_after": sum(after["benchmarks"][b]["unparseable"] for b in m["benchmarks"]),
        }
    return out


def trace_counts(manifest: dict[str, Any]) -> dict[str, Any]:
    """Teacher samples, correct samples, questions kept and traces accepted, from the build manifest."""
    t = manifest["totals"]
    return {
        "traces_per_question": int(manifest["recipe"]["traces_per_question"]) if "recipe" in manifest else None,
        "questions_in": t["questions_in"],
        "questions_kept": t["questions_kept"],
        "samples": t["samples"],
        "samples_correct": t["samples_correct"],
        "traces_accepted": t["traces_kept"],
        "response_tokens": t["response_tokens"],
    }


def format_report(report: dict[str, Any]) -> str:
    """The printed report."""
    tr = report["traces"]
    lines = [
        "",
        f"=== OctoMed-JAX demo: recipe {report['recipe']!r}, K={tr['traces_per_question']}, seed {report['seed']} ===",
        f"{'category':<20}{'chance':>8}{'before':>8}{'after':>8}{'questions':>11}",
    ]
    for c, m in report["categories"].items():
        lines.append(f"{c:<20}{m['chance']:>8.1f}{m['before']:>8.1f}{m['after']:>8.1f}{m['questions']:>11}")
    lines += [
        f"teacher: {tr['samples']} samples, {tr['samples_correct']} correct "
        f"({100 * tr['samples_correct'] / max(1, tr['samples']):.0f}%); {tr['traces_accepted']} traces accepted "
        f"for {tr['questions_kept']} of {tr['questions_in']} questions",
        f"trained: {report['steps']} steps, {report['tokens_trained']:.0f} loss tokens "
        f"(final loss {report['final_loss']:.3f})",
        "time: " + ", ".join(f"{k} {v:.0f}s" for k, v in report["timings_s"].items()),
    ]
    hf = report.get("hf_check")
    if hf:
        lines += [
            "transformers reload of the HF export, one held-out question:",
            "  " + hf["question"].replace("\n", "\n  "),
            f"  -> {hf['response']!r}",
            f"  answer {hf['answer']} (truth {hf['truth']}): {'correct' if hf['correct'] else 'wrong'}",
        ]
    return "\n".join(lines)


def plot_report(report: dict[str, Any], losses: dict[int, float], path: str) -> None:
    """Loss curve and per-category accuracy before/after (with chance) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = sorted(losses)
    ax1.plot(steps, [losses[s] for s in steps], color="#4C72B0")
    ax1.set(xlabel="step", ylabel="loss (assistant tokens)", title="training loss", yscale="log")
    cats = list(report["categories"])
    x = range(len(cats))
    before = [report["categories"][c]["before"] for c in cats]
    after = [report["categories"][c]["after"] for c in cats]
    ax2.bar([i - 0.2 for i in x], before, 0.4, label="before", color="#BBBBBB")
    ax2.bar([i + 0.2 for i in x], after, 0.4, label="after", color="#55A868")
    for i, c in enumerate(cats):
        ax2.hlines(report["categories"][c]["chance"], i - 0.45, i + 0.45, colors="k", linestyles="--",
                   label="chance" if i == 0 else None)
    ax2.set_xticks(list(x), cats)
    ax2.set(ylim=(0, 100), ylabel="held-out accuracy (%)", title=f"K={report['traces']['traces_per_question']}")
    ax2.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Builds, evaluates, trains, evaluates, exports, reloads with transformers, reports.

    Args:
      config: `configs/demo.py` (any recipe of `demo_world` sources works).
      workdir: checkpoints, metrics, `hf/`, `data/` (by default) and the report go here.

    Returns:
      The report (also written to `<workdir>/<demo.report>.json`), with the trainer's summary fields.
    """
    from octomed_jax.training.trainer import train

    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    data_dir = data_dir_of(config, workdir)
    manifest = build_if_missing(config, data_dir)
    config = ml_collections.ConfigDict(config.to_dict())  # a copy: the caller's config stays as given
    config.data.data_dir = data_dir
    if not config.init_from and config.demo.init == "transformers":
        config.init_from = init_student(config, os.path.join(workdir, "init"))
    timings["build"] = time.perf_counter() - t_start

    questions = world.held_out(config.recipe, limit=config.eval.max_questions)
    results: dict[int, Any] = {}
    t0 = time.perf_counter()
    summary = train(config, workdir, evaluate_fn=make_eval_hook(config, questions, results))
    timings["train_and_eval"] = time.perf_counter() - t0
    if 0 not in results or len(results) < 2:
        raise RuntimeError("the demo needs the eval before and after training (eval.at_start, a fresh workdir)")
    first, last = min(results), max(results)

    check = None
    if config.demo.hf_check and config.export.hf:
        t0 = time.perf_counter()
        mm = [q for q in questions if q.category == "mm_reasoning"] or questions
        check = hf_check(os.path.join(workdir, "hf"), mm[0], config.recipe.images.max_pixels,
                         config.eval.max_new_tokens)
        timings["hf_reload"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    losses = {int(k): float(v) for k, v in summary["losses"].items()}
    report = {
        "recipe": config.recipe.name,
        "seed": int(config.recipe.seed),
        "workdir": workdir,
        "categories": category_table(results[first].metrics, results[last].metrics),
        "traces": trace_counts(manifest),
        "tokens_trained": float(summary["tokens_trained"]),
        "steps": int(summary["end_step"]),
        "final_loss": losses[max(losses)] if losses else float("nan"),
        "losses": losses,
        "hf_check": check,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    from octomed_jax.evaluation.report import write_json

    base = os.path.join(workdir, config.demo.report)
    write_json(report, base + ".json")
    plot_report(report, losses, base + ".png")
    print(format_report(report))
    print(f"report: {base}.json, {base}.png")
    logging.info("demo report written to %s.json", base)
    return {**summary, "report": base + ".json"}


__all__ = ["REPORT_FIELDS", "build_if_missing", "data_dir_of", "format_report", "hf_check", "run"]
