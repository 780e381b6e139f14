"""The demo driver: the recipe end to end on the synthetic world, one command, nothing to download.

`python -m octomed_demo` runs `run(config, workdir)`, one progress bar per phase:

1. build: the accepted traces with `data_pipeline.build.run_build` into `<workdir>/data` when they are
   missing (teacher sampling, store, rejection sampling, K traces, shards, manifest);
2. eval + train + eval: `training.trainer.train`, whose in-process eval hook scores the held-out split
   before the first step and after the last (`evaluation.run.evaluate_model`, greedy);
3. export: the HF export, reloaded with transformers (when torch is installed) to answer one held-out question;
4. a report (accuracy per category before/after against chance, traces, tokens, time), also written as
   `<workdir>/demo_report.json` with a PNG of the loss curve and the accuracies beside it.

Library INFO logs (absl, Orbax, JAX) go to `<workdir>/demo.log`; the console keeps warnings and errors.
Rerunning the same command after an interruption (SIGTERM, a kill, Ctrl-C) resumes from the last checkpoint:
each evaluation is kept in `<workdir>/demo_eval/`, and the losses and tokens come from `metrics.jsonl`, so
the report equals that of a run never interrupted.

Every figure of the report except the timings is a function of the config (seeded world, teacher, data
order and initialisation), so a rerun into a fresh workdir reproduces it.
"""

from __future__ import annotations

import json
import logging as pylogging
import os
import sys
import time
from typing import Any

import ml_collections
from absl import logging

from data_pipeline.records import Question
from octomed_demo import world

REPORT_FIELDS = ("categories", "traces", "tokens_trained", "steps", "hf_check", "timings_s")
LOG_FILE = "demo.log"
EVAL_DIR = "demo_eval"  # <workdir>/demo_eval/step_<n>.json: the metrics of each evaluation, kept across restarts


def route_library_logs(workdir: str) -> str:
    """Sends INFO logs (absl, Orbax, JAX) to `<workdir>/demo.log`; the console keeps warnings and errors.

    Returns:
      The log file's path.
    """
    from absl import logging as absl_logging

    path = os.path.join(workdir, LOG_FILE)
    root = pylogging.getLogger()
    if any(isinstance(h, pylogging.FileHandler) and h.baseFilename == os.path.abspath(path) for h in root.handlers):
        return path
    consoles = [h for h in root.handlers if not isinstance(h, pylogging.FileHandler)]
    for h in consoles:  # absl's handler (when absl.app runs) or any other console handler
        h.setLevel(max(h.level, pylogging.WARNING))
    if not consoles:  # no console handler: logging's last resort would go quiet once the file handler is there
        console = pylogging.StreamHandler(sys.stderr)
        console.setLevel(pylogging.WARNING)
        root.addHandler(console)
    handler = pylogging.FileHandler(path)
    handler.setLevel(pylogging.INFO)
    handler.setFormatter(pylogging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(pylogging.INFO)
    absl_logging.set_verbosity(absl_logging.INFO)
    return path


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

    from octomed_jax.contract import model_config_from, tokenizer_special_ids
    from octomed_jax.hf import save_hf
    from octomed_jax.models.families import init_model

    if os.path.exists(os.path.join(path, "config.json")):
        return path
    special_ids = tokenizer_special_ids(config.data.get("tokenizer_path") or None, config.model.family)
    model = init_model(model_config_from(config, special_ids), seed=config.train.seed)
    state = nnx.state(model.language_model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    key = jax.random.key(config.train.seed + 1)
    for i, (name, var) in enumerate(sorted(flat.items(), key=lambda kv: str(kv[0]))):
        if name[-1] == "kernel":
            var.set_value(0.02 * jax.random.normal(jax.random.fold_in(key, i), var.get_value().shape,
                                                   var.get_value().dtype))
    nnx.update(model.language_model, nnx.from_flat_state(flat))
    save_hf(model, path, special_ids=special_ids)
    return path


def chance(category: str) -> float:
    """Accuracy (%) of guessing among the category's options."""
    return 100.0 / world.option_counts()[category]


def eval_path(workdir: str, step: int) -> str:
    return os.path.join(workdir, EVAL_DIR, f"step_{step}.json")


def make_eval_hook(config: ml_collections.ConfigDict, questions: list[Question], workdir: str,
                   timings: dict[str, float], final: dict[str, Any]) -> Any:
    """The trainer's `evaluate_fn`: `evaluate_model` on the held-out questions.

    Each evaluation's metrics are written to `<workdir>/demo_eval/step_<n>.json`, the student's responses to
    `step_<n>.<source>.responses.jsonl` (so a resumed run still
    has the one before training), its time added to `timings` ("eval_before" at step 0, else "eval_after"),
    and the model it scored kept in `final["model"]` (the last one is exported).
    """
    from octomed_jax import sharding as sharding_lib
    from octomed_jax.contract import RunContract
    from octomed_jax.evaluation.report import write_json, write_responses
    from octomed_jax.evaluation.run import evaluate_model
    from octomed_jax.generation import SamplingParams
    from octomed_jax.training.trainer import flatten_eval_metrics

    e = config.eval
    params = SamplingParams(temperature=e.temperature, top_p=e.top_p, max_new_tokens=e.max_new_tokens)
    mesh = sharding_lib.make_mesh(dict(config.mesh))  # equal to the trainer's: same devices, same shape
    rules = tuple(tuple(r) for r in config.rules)
    contract = RunContract.from_config(config)  # the trainer's prompting and preprocessing, from the same fields

    def evaluate(model: Any, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        result = evaluate_model(model, questions, params, mesh=mesh, rules=rules, contract=contract,
                                max_batch=e.max_batch, progress=True)
        os.makedirs(os.path.join(workdir, EVAL_DIR), exist_ok=True)
        write_json(result.metrics, eval_path(workdir, step))
        for source, results in result.results.items():  # what the student answered, to read beside the report
            write_responses(results, eval_path(workdir, step).replace(".json", f".{source}.responses.jsonl"))
        phase = "eval_before" if step == 0 else "eval_after"
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - t0
        final["model"], final["step"] = model, step
        return flatten_eval_metrics(result.metrics)

    return evaluate


def load_eval(workdir: str, step: int) -> dict[str, Any]:
    """The metrics of the evaluation at `step`, as the eval hook wrote them."""
    path = eval_path(workdir, step)
    if not os.path.exists(path):
        raise RuntimeError(
            f"{path} is missing: this workdir holds checkpoints of a run that did not evaluate "
            + ("before training (eval.at_start=False): set --config.eval.at_start=True" if step == 0 else
               f"at step {step}")
            + " and use a fresh --workdir"
        )
    with open(path) as f:
        return json.load(f)


def trained_steps(workdir: str, end_step: int) -> tuple[dict[int, float], float]:
    """(step -> loss, loss tokens summed) over steps 1..end_step, from `metrics.jsonl` (`train.log_every=1`).

    A step logged again after a resume keeps its last value, so an interrupted run reads as an uninterrupted one.
    """
    rows: dict[int, dict[str, Any]] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r["kind"] == "train" and r["step"] <= end_step:
                rows[r["step"]] = r
    missing = sorted(set(range(1, end_step + 1)) - set(rows))
    if missing:
        raise RuntimeError(f"{workdir}/metrics.jsonl has no loss for steps {missing[:5]}...: the demo logs every "
                           "step (train.log_every=1); use a fresh --workdir")
    steps = sorted(rows)
    return {s: float(rows[s]["loss"]) for s in steps}, sum(float(rows[s]["loss_tokens"]) for s in steps)


def export(model: Any, workdir: str, end_step: int, dtype: str | None) -> str:
    """The HF export of `model` into `<workdir>/hf`, with the run contract of its checkpoint (as the trainer's)."""
    from octomed_jax.checkpoint import load_contract
    from octomed_jax.hf.export import export_for_serving

    contract = load_contract(os.path.join(workdir, "checkpoints", str(end_step)))
    out = os.path.join(workdir, "hf")
    export_for_serving(model, contract, out, dtype=dtype or None)
    return out


def hf_check(hf_dir: str, question: Question, max_new_tokens: int) -> dict[str, Any] | None:
    """Reloads the HF export with transformers (its family's class) and answers `question` greedily; None
    without torch. The prompt is built as training built it: the export's contract gives the tokenizer's ids,
    the pixel bounds and the family's image parameters."""
    try:
        import torch
        import transformers
    except ImportError:
        print("demo: torch/transformers not installed; skipping the transformers reload of the export")
        return None
    import numpy as np

    from data_pipeline.answers import extract_answer
    from data_pipeline.formats import render_question
    from octomed_jax.checkpoint import load_contract
    from octomed_jax.data.tokenizer import load_tokenizer
    from octomed_jax.generation.prompts import question_prompt

    contract = load_contract(hf_dir)
    tokenizer = load_tokenizer(hf_dir, special_ids=contract.special_ids)
    # The class from config.json's model_type (Qwen2.5-VL or Qwen3-VL); no remote code.
    model = transformers.AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=torch.float32).eval()
    prompt = question_prompt(tokenizer, question, system_prompt=contract.prompting.system_prompt,
                             instruction=contract.prompting.instruction, template=contract.prompting.template,
                             **contract.preprocessing.image_options(contract.model))
    ids = torch.tensor(prompt.token_ids[None].astype(np.int64))
    inputs: dict[str, Any] = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == model.config.image_token_id).long(),  # 3-D M-RoPE, as in training
    }
    if prompt.pixel_values is not None:
        inputs["pixel_values"] = torch.tensor(prompt.pixel_values)
        inputs["image_grid_thw"] = torch.tensor(np.asarray(prompt.image_grid_thw))
    if contract.model.traits.tiled:  # 1-D positions; its tiles [n, 3, size, size], held as patches in the prompt
        side = contract.model.vision.image_size
        inputs = {k: v for k, v in inputs.items() if k not in ("mm_token_type_ids", "image_grid_thw")}
        if prompt.pixel_values is not None:
            inputs["pixel_values"] = torch.tensor(prompt.pixel_values.reshape(-1, 3, side, side))
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
    """Builds, evaluates, trains, evaluates, exports, reloads with transformers, reports; resumes when rerun.

    Args:
      config: `configs/demo.py` (any recipe of `demo_world` sources works).
      workdir: checkpoints, metrics, `hf/`, `data/` (by default), the log file and the report go here.

    Returns:
      The trainer's summary with "report" (the path of `<workdir>/<demo.report>.json`), or with
      "preempted" when training was interrupted (rerun the same command to resume).
    """
    from tqdm import tqdm

    from octomed_jax.evaluation.report import write_json
    from octomed_jax.training.trainer import train

    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    print(f"demo: library logs (absl, Orbax, JAX) go to {route_library_logs(workdir)}")
    data_dir = data_dir_of(config, workdir)
    manifest = build_if_missing(config, data_dir)
    config = ml_collections.ConfigDict(config.to_dict())  # a copy: the caller's config stays as given
    config.data.data_dir = data_dir
    if not config.init_from and config.demo.init == "transformers":
        config.init_from = init_student(config, os.path.join(workdir, "init"))
    timings["build"] = time.perf_counter() - t_start

    questions = world.held_out(config.recipe, limit=config.eval.max_questions)
    final: dict[str, Any] = {}
    train_config = ml_collections.ConfigDict(config.to_dict())
    train_config.export.hf = False  # the demo exports itself, in a phase of its own
    t0 = time.perf_counter()
    summary = train(train_config, workdir, evaluate_fn=make_eval_hook(config, questions, workdir, timings, final))
    timings["train"] = time.perf_counter() - t0 - timings.get("eval_before", 0.0) - timings.get("eval_after", 0.0)
    if summary.get("preempted"):
        step = max(summary["losses"], default=summary["start_step"])
        print(f"demo: interrupted at step {step}, checkpoint saved in {workdir}/checkpoints; rerun the same command "
              "to resume")
        return summary
    end = int(summary["end_step"])
    before, after = load_eval(workdir, 0), load_eval(workdir, end)
    losses, tokens = trained_steps(workdir, end)

    check = None
    if config.export.hf:
        t0 = time.perf_counter()
        with tqdm(total=2 if config.demo.hf_check else 1, desc="export", unit="part") as bar:
            hf_dir = export(final["model"], workdir, end, config.export.dtype)
            bar.update(1)
            if config.demo.hf_check:
                mm = [q for q in questions if q.category == "mm_reasoning"] or questions
                check = hf_check(hf_dir, mm[0], config.eval.max_new_tokens)
                bar.update(1)
        timings["export"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    report = {
        "recipe": config.recipe.name,
        "seed": int(config.recipe.seed),
        "workdir": workdir,
        "categories": category_table(before, after),
        "traces": trace_counts(manifest),
        "tokens_trained": tokens,
        "steps": end,
        "final_loss": losses[max(losses)] if losses else float("nan"),
        "losses": losses,
        "hf_check": check,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    base = os.path.join(workdir, config.demo.report)
    write_json(report, base + ".json")
    plot_report(report, losses, base + ".png")
    print(format_report(report))
    print(f"report: {base}.json, {base}.png")
    print(f"the student's answers, before and after training: {os.path.join(workdir, EVAL_DIR)}/*.responses.jsonl")
    logging.info("demo report written to %s.json", base)
    return {**summary, "report": base + ".json"}


__all__ = ["LOG_FILE", "REPORT_FIELDS", "build_if_missing", "data_dir_of", "format_report", "hf_check",
           "route_library_logs", "run"]
