"""Decode throughput of our sampler against transformers' `generate` on the same small model (CPU).

  python benchmarks/bench_generate.py [--layers=4 --width=128 --batch=4 --new_tokens=64 --repeats=3]

Both sides load the same weights (ours through `load_hf` from the folder transformers saved), take the
same batch of text prompts of different lengths (left-padded), decode greedily with no stop token so each
row makes exactly `new_tokens` tokens, and are timed after a warm-up call (ours: compilation). Decode
tokens/s excludes the prefill: (time(new_tokens) - time(1)) per (new_tokens - 1) steps x batch. Prints
both figures, the ratio ours / transformers, and whether the greedy tokens agree.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from common import same_model_both_sides, small_config

from octomed_jax.generation import Prompt, Sampler, SamplingParams

NEVER = 151_999  # outside the vocabulary: no row stops early


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    cfg = small_config(args.layers, args.width)
    hf, ours = same_model_both_sides(cfg)
    hf.eval()
    torch.set_num_threads(os.cpu_count() or 1)

    rng = np.random.RandomState(0)
    lengths = np.linspace(40, 100, args.batch).astype(int)
    prompts = [Prompt(rng.randint(10, 150000, size=n)) for n in lengths]
    width = int(lengths.max())
    ids = np.zeros((args.batch, width), np.int64)
    mask = np.zeros_like(ids)
    for r, pr in enumerate(prompts):
        ids[r, width - len(pr.token_ids):] = pr.token_ids
        mask[r, width - len(pr.token_ids):] = 1

    sampler = Sampler(ours, stop_token_ids=(NEVER,), max_batch=args.batch)

    def ours_run(n: int) -> list[list[int]]:
        out = sampler.generate(prompts, SamplingParams(max_new_tokens=n))
        return [o[0].token_ids for o in out]

    def hf_run(n: int) -> list[list[int]]:
        with torch.no_grad():
            out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                              mm_token_type_ids=torch.zeros_like(torch.tensor(ids)), do_sample=False,
                              max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=0)
        return out[:, width:].tolist()

    def best_time(fn, n: int) -> tuple[float, list[list[int]]]:
        result = fn(n)  # warm-up (compilation for ours)
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            result = fn(n)
            times.append(time.perf_counter() - t)
        return min(times), result

    figures = {}
    for name, fn in (("ours", ours_run), ("transformers", hf_run)):
        t_full, tokens = best_time(fn, args.new_tokens)
        t_one, _ = best_time(fn, 1)
        decode = (args.new_tokens - 1) * args.batch / max(t_full - t_one, 1e-9)
        end_to_end = args.new_tokens * args.batch / t_full
        figures[name] = (decode, end_to_end, tokens)
        print(f"{name:>12}: decode {decode:8.1f} tokens/s, end-to-end {end_to_end:8.1f} tokens/s "
              f"({t_full:.3f} s for {args.batch} x {args.new_tokens} tokens, prefill+1 token {t_one:.3f} s)")
    same = figures["ours"][2] == figures["transformers"][2]
    print(f"model: {args.layers} layers, width {args.width}, vocab {cfg.text.vocab_size}; batch {args.batch}, "
          f"prompts {lengths.tolist()} tokens, {args.new_tokens} new tokens, greedy tokens identical: {same}")
    print(f"ratio ours / transformers: decode {figures['ours'][0] / figures['transformers'][0]:.2f}x, "
          f"end-to-end {figures['ours'][1] / figures['transformers'][1]:.2f}x")


if __name__ == "__main__":
    main()
