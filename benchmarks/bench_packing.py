"""Packing efficiency and input-pipeline throughput on an OctoMed-like length distribution.

    python benchmarks/bench_packing.py                      # both parts, seq_len 8192
    python benchmarks/bench_packing.py --part efficiency --examples 200000
    python benchmarks/bench_packing.py --part throughput --records 600

Efficiency: the streaming packer (`RowPacker`) on synthetic example sizes drawn like OctoMed's data
(question ~71 tokens plus options, reasoning ~840 tokens with a log-normal long tail, 46% of examples
with one image smart-resized to at most 262,144 pixels), for both algorithms and several numbers of open
rows; efficiency = real tokens / (rows x seq_len), the padding the train step would waste.

Throughput: the whole host pipeline (`make_iterator`: ArrayRecord read, msgpack decode, image decode and
preprocessing, tokenisation with the real Qwen tokenizer, positions, packing, batching) over synthetic
shards of text-only traces and of OctoMed's mix (46% with an image), in tokens of packed rows per second
per core. "Per core" divides by the process CPU time, so it does not depend on how busy the machine is.
Short runs understate efficiency: the open rows flushed at the end of the data are partly empty.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from octomed_jax.data import OCTOMED_MAX_PIXELS, RowPacker, smart_resize  # noqa: E402

TEMPLATE_TOKENS = 30  # system turn, role headers, <think> tags, answer line
IMAGE_FRACTION = 0.46
QUESTION_MEAN, OPTIONS_MEAN, REASONING_MEAN = 71, 30, 840


def image_size(rng: random.Random) -> tuple[int, int]:
    """Medical images: most larger than the 512x512 cap (fundus, CT, X-ray), some small crops."""
    if rng.random() < 0.75:
        side = rng.choice([512, 768, 1024, 2048])
        return side, int(side * rng.choice([1.0, 1.0, 0.75, 1.33]))
    return rng.randint(64, 448), rng.randint(64, 448)


def sample_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """(tokens, patches) of n synthetic examples."""
    rng = random.Random(seed)
    sigma = 0.8  # log-normal tail: a few percent of reasonings above 3k tokens
    mu = np.log(REASONING_MEAN) - sigma**2 / 2
    out = []
    for _ in range(n):
        tokens = TEMPLATE_TOKENS + max(10, int(rng.gauss(QUESTION_MEAN, 40)))
        tokens += max(10, int(rng.gauss(OPTIONS_MEAN, 10)))
        tokens += int(rng.lognormvariate(mu, sigma))
        patches = 0
        if rng.random() < IMAGE_FRACTION:
            h, w = smart_resize(*image_size(rng), max_pixels=OCTOMED_MAX_PIXELS)
            patches = (h // 14) * (w // 14)
            tokens += patches // 4 + 2
        out.append((tokens, patches))
    return out


def efficiency(n: int, seq_len: int, max_patches: int) -> None:
    sizes = sample_sizes(n)
    kept = [(t, p) for t, p in sizes if t <= seq_len and p <= max_patches]
    tokens = np.array([t for t, _ in sizes])
    print(f"\n== packing efficiency: {n} examples, seq_len {seq_len}, max_patches {max_patches} ==")
    print(
        f"example tokens: mean {tokens.mean():.0f}, p50 {np.median(tokens):.0f}, p99 {np.percentile(tokens, 99):.0f},"
        f" max {tokens.max()}; with images {np.mean([p > 0 for _, p in sizes]):.0%};"
        f" dropped as overlong {1 - len(kept) / n:.3%}"
    )
    print(f"{'algorithm':>10} {'open rows':>9} {'rows':>7} {'efficiency':>10} {'patch fill':>10} {'pack s':>7}")
    for algorithm in ("best_fit", "first_fit"):
        for open_rows in (1, 4, 16, 64):
            packer: RowPacker[tuple[int, int]] = RowPacker(seq_len, max_patches, algorithm, open_rows)
            start = time.process_time()
            rows = []
            for t, p in kept:
                rows += packer.add((t, p), t, p)
            rows += packer.flush()
            elapsed = time.process_time() - start
            real = sum(t for row in rows for t, _ in row)
            patches = sum(p for row in rows for _, p in row)
            print(
                f"{algorithm:>10} {open_rows:>9} {len(rows):>7} {real / (len(rows) * seq_len):>10.2%} "
                f"{patches / (len(rows) * max_patches):>10.2%} {elapsed:>7.2f}"
            )


def write_shards(out: str, source: str, n: int, image_fraction: float, seed: int = 0) -> None:
    """Synthetic traces with OctoMed-like lengths (a fraction with a JPEG image) through data_pipeline's writer,
    with their manifest."""
    from PIL import Image

    from data_pipeline.records import AcceptedTrace, ImageRef, Question
    from data_pipeline.writer import TraceWriter, build_manifest, write_manifest

    rng = random.Random(seed)
    words = (
        "the patient presents with findings consistent with acute inflammation of the lower lobe so we "
        "consider infection versus malignancy and weigh imaging laboratory results history"
    ).split()
    sigma = 0.8
    mu = np.log(REASONING_MEAN) - sigma**2 / 2
    with TraceWriter(out) as w:
        for i in range(n):
            # ~1.1 tokens per word for this vocabulary.
            reasoning = " ".join(rng.choice(words) for _ in range(int(rng.lognormvariate(mu, sigma) / 1.1)))
            question = " ".join(rng.choice(words) for _ in range(max(10, int(rng.gauss(QUESTION_MEAN, 40) / 1.1))))
            images = ()
            with_images = rng.random() < image_fraction
            if with_images:
                h, wd = image_size(rng)
                yy, xx = np.mgrid[0:h, 0:wd]
                arr = (127 + 100 * np.sin(xx / (7 + i % 5)) * np.cos(yy / 11)).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(np.stack([arr, arr, 255 - arr], -1)).save(buf, format="JPEG", quality=90)
                images = (ImageRef(data=buf.getvalue(), format="jpeg"),)
            q = Question(
                id=f"q{i:06d}",
                source=source,
                category="mm_reasoning" if with_images else "text",
                question=question,
                options={k: f"option {k} text here" for k in "ABCDE"},
                answer="B",
                images=images,
            )
            response = f"<think>\n{reasoning}\n</think>\n\nThe answer is \\boxed{{B}} (option B text here)."
            w.add(AcceptedTrace(question=q, response=response, format="cot", teacher="synthetic", sample_index=0))
    write_manifest(out, build_manifest(files=w.files, out_dir=out))  # training reads what the manifest lists


def throughput(records: int, seq_len: int, max_patches: int, batch_size: int) -> None:
    from octomed_jax.data import DataConfig, make_iterator
    from octomed_jax.data.examples import _tokenizer
    from octomed_jax.models.config import get_preset

    model_cfg = get_preset("7b")
    _tokenizer(None)  # load once, outside the timings
    print(
        f"\n== pipeline throughput: seq_len {seq_len}, max_patches {max_patches}, batch {batch_size}, "
        "workers 0, read threads 1 =="
    )
    with tempfile.TemporaryDirectory() as tmp:
        for source, image_fraction in (("text_only", 0.0), ("octomed_mix", IMAGE_FRACTION)):
            write_shards(tmp, source, records, image_fraction)
            cfg = DataConfig(
                data_dir=tmp,
                sources={source: 1.0},
                seq_len=seq_len,
                max_patches=max_patches,
                batch_size=batch_size,
                read_threads=1,
                max_open_rows=16,
            )
            it = make_iterator(cfg, model_cfg, process_index=0, process_count=1)
            wall, cpu = time.perf_counter(), time.process_time()
            n_batches = sum(1 for _ in it)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            p = it.counts()["packing"]
            print(
                f"{source:>12}: {p['examples']} examples in {p['rows']} rows "
                f"({n_batches} batches), {p['tokens']} tokens, efficiency {p['efficiency']:.2%}, patch fill "
                f"{p['patch_fill']:.2%}; {p['tokens'] / cpu:,.0f} tokens/s/core "
                f"({p['tokens'] / wall:,.0f} tokens/s wall, {cpu:.1f} s CPU)"
            )

            # Packing and batching alone (examples already decoded), to separate it from decoding.
            examples = [e for e in it._examples if hasattr(e, "input_ids")]  # noqa: SLF001
            from octomed_jax.data import pack_rows

            packer = RowPacker(seq_len, max_patches, "best_fit", 16)
            start = time.process_time()
            rows = []
            for e in examples:
                rows += packer.add(e, len(e), e.num_patches)
            rows += packer.flush()
            for k in range(0, len(rows) - batch_size + 1, batch_size):
                pack_rows(rows[k : k + batch_size], seq_len, max_patches, model_cfg.vision)
            cpu = time.process_time() - start
            tokens = sum(len(e) for e in examples)
            print(f"{'':>12}  packing + batching alone: {tokens / cpu:,.0f} tokens/s/core")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("all", "efficiency", "throughput"), default="all")
    ap.add_argument("--seq_len", type=int, default=8192)
    ap.add_argument("--max_patches", type=int, default=4096)
    ap.add_argument("--examples", type=int, default=50_000, help="examples for the efficiency simulation")
    ap.add_argument("--records", type=int, default=300, help="records per source for the throughput run")
    ap.add_argument("--batch_size", type=int, default=4)
    args = ap.parse_args()
    if args.part in ("all", "efficiency"):
        efficiency(args.examples, args.seq_len, args.max_patches)
    if args.part in ("all", "throughput"):
        throughput(args.records, args.seq_len, args.max_patches, args.batch_size)


if __name__ == "__main__":
    main()
