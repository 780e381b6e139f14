"""Benchmark evaluation of a checkpoint, resumable per benchmark: the library behind `python -m octomed_jax.evaluate`.

Benchmarks are sampled and scored under a `Protocol` (`evaluation.protocol`; default: the paper's, 5 seeds,
temperature 0.6, top-p 0.95, 8,192 new tokens, at most 10 images per question, MedQA by a majority of 10).
Each benchmark's metrics are written to `OUT/benchmarks/<name>.json` (and its responses to
`<name>.responses.jsonl`) as soon as it finishes; a rerun with the same settings skips it. At the end:
`OUT/results.json`, `OUT/table.md` and `OUT/table.json` (Table 2 layout) and `OUT/response_lengths.png`.
A question that cannot be prompted (an image the preprocessing refuses, a control token in its text) is
skipped and listed with its id and reason under the benchmark's `skipped_questions`, in its JSON and in `results.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from octomed_jax.contract import RunContract
from octomed_jax.evaluation.protocol import PAPER, Protocol

if TYPE_CHECKING:
    from octomed_jax.generation.sampler import SamplingParams


def _settings(protocol: Protocol, limit: int | None, contract: RunContract) -> dict[str, Any]:
    """The run's settings: the protocol, the question limit, and the contract's preprocessing and prompting."""
    return {"protocol": protocol.to_json(), "limit": limit,
            "preprocessing": dataclasses.asdict(contract.preprocessing),
            "prompting": {k: v for k, v in dataclasses.asdict(contract.prompting).items() if k != "tokenizer_path"}}


def _benchmark_settings(protocol: Protocol, name: str, limit: int | None, contract: RunContract) -> dict[str, Any]:
    """What decides one benchmark's result; a finished benchmark is reused only under equal settings."""
    params, k = protocol.sampling(name)
    return {"sampling": dataclasses.asdict(params), "seeds": list(protocol.seeds), "majority": k,
            "max_images": protocol.max_images, "limit": limit,
            **{key: v for key, v in _settings(protocol, limit, contract).items() if key != "protocol"}}


def evaluate_benchmarks(
    checkpoint: str,
    benchmarks: str | Sequence[str],
    data_dir: str,
    out: str,
    params: SamplingParams | None = None,
    *,
    protocol: Protocol = PAPER,
    seeds: Sequence[int] | None = None,
    majority: Mapping[str, int] | None = None,
    max_images: int | None = None,
    compare_to_paper: bool = False,
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
      params: `SamplingParams` of one response; None: the protocol's.
      protocol: how benchmarks are sampled and scored (`evaluation.protocol`); the paper's by default.
      seeds, majority, max_images: override the protocol's (None keeps it; `max_images=0` keeps every image).
      compare_to_paper: the table gets a row of the paper's OctoMed-7B scores.
      majority_k, limit, max_batch: see the flags.
      mesh_spec: see `--mesh`.
      dtype: compute dtype override.
      tokenizer_path: tokenizer folder override.
      model, contract: an already loaded model and its contract (skip loading `checkpoint`).
    """
    from tqdm.auto import tqdm

    from octomed_jax.checkpoint import load_contract, load_run
    from octomed_jax.data.tokenizer import load_tokenizer
    from octomed_jax.evaluation import benchmarks as bench_lib
    from octomed_jax.evaluation.report import (
        markdown_table,
        plot_response_lengths,
        table_json,
        write_json,
        write_responses,
    )
    from octomed_jax.evaluation.run import evaluate_model
    from octomed_jax.generation.sampler import Sampler
    from octomed_jax.sharding import parse_mesh

    chosen = bench_lib.select(benchmarks)
    protocol = protocol.override(params=params, seeds=seeds, majority=majority, max_images=max_images)
    unknown = sorted(set(protocol.majority) - set(bench_lib.BENCHMARKS))
    if unknown:
        raise ValueError(f"majority: unknown benchmark(s) {unknown}; known: {sorted(bench_lib.BENCHMARKS)}")
    os.makedirs(os.path.join(out, "benchmarks"), exist_ok=True)
    if contract is None:
        contract = load_contract(checkpoint)
    per_benchmark: dict[str, Any] = {}
    todo = []
    for b in chosen:
        done_path = os.path.join(out, "benchmarks", f"{b.name}.json")
        if os.path.exists(done_path):
            with open(done_path) as f:
                prior = json.load(f)
            if prior.get("settings") == _benchmark_settings(protocol, b.name, limit, contract):
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
        tokenizer = load_tokenizer(tokenizer_path or contract.prompting.tokenizer_path,
                                   special_ids=contract.special_ids)
        sampler = Sampler(model, mesh=mesh, max_batch=max_batch, stop_token_ids=contract.special_ids.stop_ids)
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
        sampling, k = protocol.sampling(b.name)
        result = evaluate_model(
            model,
            questions,
            sampling,
            tokenizer=tokenizer,
            seeds=protocol.seeds,
            majority_k=majority_k,
            majority=k,
            max_images=protocol.max_images,
            sampler=sampler,
            contract=contract,
            progress=True,
        )
        # Every question of a benchmark is one group here; name it after the benchmark, not the adapter.
        (metrics,) = result.metrics["benchmarks"].values()
        (results,) = result.results.values()
        metrics = {**metrics, "rejected_rows": dict(rejected), "seconds": round(time.time() - start, 2)}
        # the questions asked; the skipped ones are in the metrics
        write_responses(results, os.path.join(out, "benchmarks", f"{b.name}.responses.jsonl"))
        write_json(
            {"benchmark": b.name, "settings": _benchmark_settings(protocol, b.name, limit, contract),
             "metrics": metrics},
            os.path.join(out, "benchmarks", f"{b.name}.json"),
        )
        per_benchmark[b.name] = metrics
        scored = f"majority of {k}" if k else "accuracy"
        tqdm.write(
            f"[evaluate] {b.name}: {scored} {metrics['score']:.2f} ± {metrics['score_std']:.2f} over "
            f"{metrics['num_questions']} questions x {len(protocol.seeds)} seeds, "
            f"{metrics['mean_response_tokens']:.0f} tokens/response, {metrics['unparseable']} unparseable, "
            f"{metrics['num_skipped']} skipped, {metrics['images_capped']} cut to {protocol.max_images} images"
        )

    from octomed_jax.evaluation.metrics import summarize

    per_benchmark = {b.name: per_benchmark[b.name] for b in chosen if b.name in per_benchmark}
    categories = {n: bench_lib.BENCHMARKS[n].category for n in per_benchmark}
    metrics = {
        "benchmarks": per_benchmark,
        "categories": categories,
        "summary": summarize(per_benchmark, categories) if per_benchmark else {},
    }
    final = {"checkpoint": checkpoint, "settings": _settings(protocol, limit, contract), "metrics": metrics,
             "missing": missing}
    write_json(final, os.path.join(out, "results.json"))
    if per_benchmark:
        runs = {os.path.basename(os.path.normpath(checkpoint)) or checkpoint: metrics}
        table = markdown_table(runs, paper=compare_to_paper)
        with open(os.path.join(out, "table.md"), "w") as f:
            f.write(table)
        write_json(table_json(runs, paper=compare_to_paper), os.path.join(out, "table.json"))
        plot_response_lengths(metrics, os.path.join(out, "response_lengths.png"))
        print(table)
    print(f"[evaluate] {len(per_benchmark)} benchmark(s) scored, {len(missing)} missing; results in {out}")
    return final


__all__ = ["evaluate_benchmarks"]
