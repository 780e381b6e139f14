"""Evaluate a checkpoint on the paper's benchmarks.

    python -m octomed_jax.evaluate --checkpoint=PATH --benchmarks=all --data_dir=DATA --out=OUT

PATH is our checkpoint folder or a Hugging Face folder. Each benchmark's metrics are written to
`OUT/benchmarks/<name>.json` (and its responses to `<name>.responses.jsonl`) as soon as it finishes; a
rerun with the same settings skips it. At the end: `OUT/results.json`, `OUT/table.md` (Table 2 layout)
and `OUT/response_lengths.png`. Defaults follow the paper's protocol except the seed count.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import Any

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags (only when run as a program, so importing this module is side-effect free)."""
    flags.DEFINE_string("checkpoint", None, "Our checkpoint folder or a Hugging Face checkpoint folder.")
    flags.DEFINE_string("benchmarks", "all", "Comma list of benchmark names and/or categories, or 'all'.")
    flags.DEFINE_string("data_dir", "data/benchmarks", "Root of the local benchmark files (see evaluation.benchmarks).")
    flags.DEFINE_string("out", "eval_out", "Output folder.")
    flags.DEFINE_list("seeds", ["0"], "Seeds; accuracy is averaged over them (the paper uses 5).")
    flags.DEFINE_integer("n", 1, "Samples per question and seed.")
    flags.DEFINE_list("majority_k", [], "Report majority-vote accuracy over the first k responses per question.")
    flags.DEFINE_float("temperature", 0.6, "Sampling temperature (0: greedy).")
    flags.DEFINE_float("top_p", 0.95, "Nucleus mass.")
    flags.DEFINE_integer("top_k", 0, "Top-k (0: off).")
    flags.DEFINE_integer("max_new_tokens", 8192, "Token budget per response.")
    flags.DEFINE_integer("limit", None, "Evaluate only the first N questions of each benchmark.")
    flags.DEFINE_integer("max_batch", 32, "Rows per compiled sampling call.")
    flags.DEFINE_string("mesh", "", "Mesh shape, e.g. 'tensor=-1' or 'data=2,tensor=4'; empty: one device.")
    flags.DEFINE_string("dtype", "", "Compute dtype (e.g. bfloat16); empty keeps the checkpoint's.")
    flags.DEFINE_string("tokenizer", "", "Tokenizer folder; default: the checkpoint's, else the bundled Qwen files.")
    flags.DEFINE_integer("max_pixels", 262_144, "Image resize cap (OctoMed: 512 x 512).")


def _settings(params: Any, seeds: Sequence[int], limit: int | None, max_pixels: int) -> dict[str, Any]:
    return {"sampling": dataclasses.asdict(params), "seeds": list(seeds), "limit": limit, "max_pixels": max_pixels}


def evaluate_benchmarks(
    checkpoint: str,
    benchmarks: str | Sequence[str],
    data_dir: str,
    out: str,
    params: Any,
    *,
    seeds: Sequence[int] = (0,),
    majority_k: Sequence[int] = (),
    limit: int | None = None,
    max_batch: int = 32,
    mesh_spec: str = "",
    dtype: str | None = None,
    tokenizer_path: str | None = None,
    max_pixels: int = 262_144,
    model: Any = None,
) -> dict[str, Any]:
    """Runs the benchmarks one by one, resumably; returns the final `results.json` contents.

    Args:
      checkpoint: our or an HF checkpoint folder.
      benchmarks: names / categories (see `evaluation.benchmarks.select`).
      data_dir: root of the benchmark files.
      out: output folder.
      params: `SamplingParams`.
      seeds, majority_k, limit, max_batch, max_pixels: see the flags.
      mesh_spec: see `--mesh`.
      dtype: compute dtype override.
      tokenizer_path: tokenizer folder override.
      model: an already loaded model (skips loading `checkpoint`).
    """
    from tqdm.auto import tqdm

    from octomed_jax.evaluation import benchmarks as bench_lib
    from octomed_jax.evaluation.report import markdown_table, plot_response_lengths, write_json
    from octomed_jax.evaluation.run import evaluate_model
    from octomed_jax.generation.loading import load_checkpoint, load_checkpoint_tokenizer, parse_mesh
    from octomed_jax.generation.sampler import Sampler

    chosen = bench_lib.select(benchmarks)
    os.makedirs(os.path.join(out, "benchmarks"), exist_ok=True)
    settings = _settings(params, seeds, limit, max_pixels)
    per_benchmark: dict[str, Any] = {}
    todo = []
    for b in chosen:
        done_path = os.path.join(out, "benchmarks", f"{b.name}.json")
        if os.path.exists(done_path):
            with open(done_path) as f:
                prior = json.load(f)
            if prior.get("settings") == settings:
                per_benchmark[b.name] = prior["metrics"]
                continue
            print(f"[evaluate] {b.name}: settings changed since the last run, evaluating again")
        todo.append(b)
    skipped = [b.name for b in chosen if b.name in per_benchmark]
    if skipped:
        print(f"[evaluate] already finished, skipped: {', '.join(skipped)}")

    sampler = tokenizer = None
    if todo:
        mesh = parse_mesh(mesh_spec)
        if model is None:
            model = load_checkpoint(checkpoint, mesh=mesh, dtype=dtype or None)
        tokenizer = load_checkpoint_tokenizer(checkpoint, tokenizer_path)
        sampler = Sampler(model, mesh=mesh, max_batch=max_batch)
    missing = {}
    for b in tqdm(todo, desc="benchmarks", unit="bench"):
        try:
            questions, rejected = b.load(data_dir, limit=limit)
        except FileNotFoundError as e:
            missing[b.name] = str(e)
            print(f"[evaluate] {b.name}: skipped, {e}")
            continue
        if not questions:
            missing[b.name] = f"no usable questions (rejections: {dict(rejected)})"
            print(f"[evaluate] {b.name}: skipped, {missing[b.name]}")
            continue
        start = time.time()
        result = evaluate_model(
            model,
            questions,
            params,
            tokenizer=tokenizer,
            seeds=seeds,
            majority_k=majority_k,
            sampler=sampler,
            max_pixels=max_pixels,
            progress=True,
        )
        # Every question of a benchmark is one group here; name it after the benchmark, not the adapter.
        (metrics,) = result.metrics["benchmarks"].values()
        (results,) = result.results.values()
        metrics = {**metrics, "rejected_rows": dict(rejected), "seconds": round(time.time() - start, 2)}
        with open(os.path.join(out, "benchmarks", f"{b.name}.responses.jsonl"), "w") as f:
            for q, r in zip(questions, results, strict=True):
                f.write(
                    json.dumps(
                        {
                            "id": q.id,
                            "answer": q.answer,
                            "responses": [[dataclasses.asdict(x) for x in seed] for seed in r.responses],
                        }
                    )
                )
                f.write("\n")
        write_json(
            {"benchmark": b.name, "settings": settings, "metrics": metrics},
            os.path.join(out, "benchmarks", f"{b.name}.json"),
        )
        per_benchmark[b.name] = metrics
        tqdm.write(
            f"[evaluate] {b.name}: accuracy {metrics['accuracy']:.2f} over {metrics['num_questions']} "
            f"questions, {metrics['mean_response_tokens']:.0f} tokens/response, "
            f"{metrics['unparseable']} unparseable"
        )

    from octomed_jax.evaluation.metrics import summarize

    per_benchmark = {b.name: per_benchmark[b.name] for b in chosen if b.name in per_benchmark}
    categories = {n: bench_lib.BENCHMARKS[n].category for n in per_benchmark}
    metrics = {
        "benchmarks": per_benchmark,
        "categories": categories,
        "summary": summarize(per_benchmark, categories) if per_benchmark else {},
    }
    final = {"checkpoint": checkpoint, "settings": settings, "metrics": metrics, "missing": missing}
    write_json(final, os.path.join(out, "results.json"))
    if per_benchmark:
        table = markdown_table({os.path.basename(os.path.normpath(checkpoint)) or checkpoint: metrics})
        with open(os.path.join(out, "table.md"), "w") as f:
            f.write(table)
        plot_response_lengths(metrics, os.path.join(out, "response_lengths.png"))
        print(table)
    print(f"[evaluate] {len(per_benchmark)} benchmark(s) scored, {len(missing)} missing; results in {out}")
    return final


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.checkpoint:
        raise app.UsageError("--checkpoint is required")
    from octomed_jax.generation.sampler import SamplingParams

    params = SamplingParams(
        temperature=FLAGS.temperature,
        top_p=FLAGS.top_p,
        top_k=FLAGS.top_k,
        max_new_tokens=FLAGS.max_new_tokens,
        n=FLAGS.n,
    ).validate()
    evaluate_benchmarks(
        FLAGS.checkpoint,
        FLAGS.benchmarks,
        FLAGS.data_dir,
        FLAGS.out,
        params,
        seeds=[int(s) for s in FLAGS.seeds],
        majority_k=[int(k) for k in FLAGS.majority_k],
        limit=FLAGS.limit,
        max_batch=FLAGS.max_batch,
        mesh_spec=FLAGS.mesh,
        dtype=FLAGS.dtype or None,
        tokenizer_path=FLAGS.tokenizer or None,
        max_pixels=FLAGS.max_pixels,
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
