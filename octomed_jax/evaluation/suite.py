"""Benchmark evaluation of a checkpoint, resumable per benchmark: the library behind `python -m octomed_jax.evaluate`.

Each benchmark's metrics are written to `OUT/benchmarks/<name>.json` (and its responses to
`<name>.responses.jsonl`) as soon as it finishes; a rerun with the same settings skips it. At the end:
`OUT/results.json`, `OUT/table.md` (Table 2 layout) and `OUT/response_lengths.png`. A question that cannot
be prompted (an image the preprocessing refuses, a control token in its text) is skipped and listed with its
id and reason under the benchmark's `skipped_questions`, in its JSON and in `results.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import Any

from octomed_jax.contract import RunContract


def _settings(params: Any, seeds: Sequence[int], limit: int | None, contract: RunContract) -> dict[str, Any]:
    """What decides a benchmark's result; a finished benchmark is reused only under equal settings."""
    return {"sampling": dataclasses.asdict(params), "seeds": list(seeds), "limit": limit,
            "preprocessing": dataclasses.asdict(contract.preprocessing),
            "prompting": {k: v for k, v in dataclasses.asdict(contract.prompting).items() if k != "tokenizer_path"}}


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
    model: Any = None,
    contract: RunContract | None = None,
) -> dict[str, Any]:
    """Runs the benchmarks one by one, resumably; returns the final `results.json` contents.

    Args:
      checkpoint: any checkpoint (`checkpoint.locate`): a training step, a workdir (its latest step), our model
        folder or an HF folder. Its run contract decides the prompting (system prompt, instruction, tokenizer)
        and the image preprocessing (max_pixels), as in training.
      benchmarks: names / categories (see `evaluation.benchmarks.select`).
      data_dir: root of the benchmark files.
      out: output folder.
      params: `SamplingParams`.
      seeds, majority_k, limit, max_batch: see the flags.
      mesh_spec: see `--mesh`.
      dtype: compute dtype override.
      tokenizer_path: tokenizer folder override.
      model, contract: an already loaded model and its contract (skip loading `checkpoint`).
    """
    from tqdm.auto import tqdm

    from octomed_jax.checkpoint import load_contract, load_run
    from octomed_jax.data.tokenizer import load_tokenizer
    from octomed_jax.evaluation import benchmarks as bench_lib
    from octomed_jax.evaluation.report import markdown_table, plot_response_lengths, write_json
    from octomed_jax.evaluation.run import evaluate_model
    from octomed_jax.generation.sampler import Sampler
    from octomed_jax.sharding import parse_mesh

    chosen = bench_lib.select(benchmarks)
    os.makedirs(os.path.join(out, "benchmarks"), exist_ok=True)
    if contract is None:
        contract = load_contract(checkpoint)
    settings = _settings(params, seeds, limit, contract)
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
            model, contract = load_run(checkpoint, mesh=mesh, **({"dtype": dtype} if dtype else {}))
        tokenizer = load_tokenizer(tokenizer_path or contract.prompting.tokenizer_path)
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
            contract=contract,
            progress=True,
        )
        # Every question of a benchmark is one group here; name it after the benchmark, not the adapter.
        (metrics,) = result.metrics["benchmarks"].values()
        (results,) = result.results.values()
        metrics = {**metrics, "rejected_rows": dict(rejected), "seconds": round(time.time() - start, 2)}
        with open(os.path.join(out, "benchmarks", f"{b.name}.responses.jsonl"), "w") as f:
            for r in results:  # the questions asked; the skipped ones are in the metrics
                f.write(
                    json.dumps(
                        {
                            "id": r.question_id,
                            "answer": r.answer,
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
            f"{metrics['unparseable']} unparseable, {metrics['num_skipped']} skipped"
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


__all__ = ["evaluate_benchmarks"]
