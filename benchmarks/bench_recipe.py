"""Throughput and memory of the recipe's CPU side: rejection + formatting + writing (no network).

    python benchmarks/bench_recipe.py                 # 100k synthetic responses, records/s per core
    python benchmarks/bench_recipe.py --mem_check     # tracemalloc peak for 10k vs 100k responses

Responses are generated on the fly (16 per question, 3 of 4 correct, ~1.5k characters of reasoning
each, R1 style with `reasoning_content`), graded by `answers.extract_answer`, formatted, deduplicated,
K=16 kept, serialised and written as sorted ArrayRecord shards. "Per core" divides by the process CPU
time, so it does not depend on how busy the machine is. Token counting (the manifest's response
tokens) is timed separately because the Rust tokenizer runs its own threads.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipeline.filters import rejection_sample  # noqa: E402
from data_pipeline.records import Question  # noqa: E402
from data_pipeline.teachers import Completion  # noqa: E402
from data_pipeline.writer import TraceWriter, count_tokens  # noqa: E402

WORDS = (
    "the patient presents with findings consistent with acute inflammation of the lower lobe so we "
    "consider infection versus malignancy and weigh imaging laboratory results history"
).split()
SAMPLES = 16


def synthetic(n_responses: int, seed: int = 0) -> Iterator[tuple[Question, list[Completion]]]:
    """Questions with their 16 responses, streamed (never all in memory)."""
    rng = random.Random(seed)
    for qi in range(n_responses // SAMPLES):
        opts = {L: f"option {L.lower()} {qi}" for L in "ABCDE"}
        q = Question(
            id=f"{qi:07d}",
            source="synthetic",
            category="text",
            question=f"Question {qi}: " + " ".join(rng.choices(WORDS, k=60)),
            options=opts,
            answer="ABCDE"[qi % 5],
        )
        comps = []
        for s in range(SAMPLES):
            letter = q.answer if s % 4 else "ABCDE"[(qi + 1) % 5]
            reasoning = " ".join(rng.choices(WORDS, k=220))
            comps.append(
                Completion(q.key, "r1", "v1", s, f"The answer is \\boxed{{{letter}}}.", reasoning, "stop", 0, 300)
            )
        yield q, comps


def run(n_responses: int, out: str, *, tokens: bool = True) -> dict[str, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    kept = 0
    texts: list[str] = []
    tok_s = tok_cpu = 0.0
    n_tokens = 0
    with TraceWriter(out) as w:
        for q, comps in synthetic(n_responses):
            r = rejection_sample(q, comps, k=16, response_format="cot", seed=0)
            for t in r.traces:
                w.add(t)
                kept += 1
                if tokens:
                    texts.append(t.response)
            if len(texts) >= 512:
                t1, p1 = time.perf_counter(), time.process_time()
                n_tokens += count_tokens(texts)
                tok_s += time.perf_counter() - t1
                tok_cpu += time.process_time() - p1
                texts.clear()
    if texts:
        t1, p1 = time.perf_counter(), time.process_time()
        n_tokens += count_tokens(texts)
        tok_s += time.perf_counter() - t1
        tok_cpu += time.process_time() - p1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "responses": n_responses,
        "kept": kept,
        "wall_s": wall,
        "cpu_s": cpu,
        "token_s": tok_s,
        "token_cpu_s": tok_cpu,
        "tokens": n_tokens,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--no_tokens", action="store_true", help="skip token counting")
    ap.add_argument("--mem_check", action="store_true", help="tracemalloc peak for 10k vs 100k responses")
    args = ap.parse_args()
    if args.mem_check:
        peaks = {}
        for n in (10_000, 100_000):
            with tempfile.TemporaryDirectory() as d:
                tracemalloc.start()
                run(n, d, tokens=False)
                peaks[n] = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
            print(f"{n:>7} responses: peak traced Python memory {peaks[n] / 2**20:.1f} MiB")
        ratio = peaks[100_000] / peaks[10_000]
        print(f"peak ratio 100k/10k = {ratio:.2f} ({'flat' if ratio < 1.5 else 'GROWS'})")
        return
    with tempfile.TemporaryDirectory() as d:
        r = run(args.n, d, tokens=not args.no_tokens)
        size = sum(os.path.getsize(os.path.join(d, "synthetic", f)) for f in os.listdir(os.path.join(d, "synthetic")))
    no_tok_cpu = r["cpu_s"] - r["token_cpu_s"]
    print(
        f"{r['responses']} responses -> {r['kept']} traces ({size / 2**20:.0f} MiB of shards) "
        f"in {r['wall_s']:.1f}s wall, {r['cpu_s']:.1f}s CPU"
    )
    print(
        f"rejection + formatting + writing: {r['responses'] / max(no_tok_cpu, 1e-9):,.0f} responses/s per core "
        f"({r['kept'] / max(no_tok_cpu, 1e-9):,.0f} traces/s per core)"
    )
    if not args.no_tokens:
        print(
            f"token counting: {r['tokens']:,} tokens in {r['token_s']:.1f}s wall "
            f"{r['token_cpu_s']:.1f}s CPU ({r['tokens'] / max(r['token_cpu_s'], 1e-9):,.0f} tokens/s per core)"
        )
    print(f"overall: {r['responses'] / r['wall_s']:,.0f} responses/s wall on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
