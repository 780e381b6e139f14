"""Synthetic accepted traces and ArrayRecord shards for the input-pipeline tests (imported by path)."""

from __future__ import annotations

import io
import os
import random

import numpy as np
from PIL import Image

from data_pipeline.records import AcceptedTrace, ImageRef, Question
from data_pipeline.writer import build_manifest, shard_name, write_dataset, write_manifest, write_shard
from octomed_jax.data import DataConfig, make_example
from octomed_jax.models.config import get_preset

WORDS = "the patient shows signs of acute infection so we weigh imaging labs and history before deciding".split()
MODEL_CFG = get_preset("tiny_vocab")


def png(seed: int, h: int, w: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def make_trace(source: str, i: int, *, reasoning_words: int, images: int = 0, seed: int = 0) -> AcceptedTrace:
    """A CoT trace: `<think>` reasoning of `reasoning_words` words, then the answer line."""
    rng = random.Random(seed * 100_003 + i)
    sizes = [(56, 84), (84, 56), (112, 112), (56, 56)]
    refs = tuple(
        ImageRef(data=png(seed + 7 * i + k, *sizes[(i + k) % len(sizes)]), format="png") for k in range(images)
    )
    reasoning = " ".join(rng.choice(WORDS) for _ in range(reasoning_words))
    q = Question(
        id=f"q{i:05d}",
        source=source,
        category="mm_reasoning" if images else "text",
        question=f"Question {i}: what is the most likely diagnosis?",
        options={"A": "Pneumonia", "B": "Asthma", "C": "Embolism"},
        answer="A",
        images=refs,
    )
    response = f"<think>\n{reasoning}\n</think>\n\nThe answer is \\boxed{{A}} (Pneumonia)."
    return AcceptedTrace(question=q, response=response, format="cot", teacher="synthetic", sample_index=0)


def write_records(out_dir: str, source: str, records: list[bytes], num_files: int = 2) -> None:
    """Raw records (possibly corrupt) as `num_files` ArrayRecord shards, in order, and their manifest."""
    folder = os.path.join(out_dir, source)
    os.makedirs(folder, exist_ok=True)
    bounds = [len(records) * f // num_files for f in range(num_files + 1)]
    files = [
        write_shard(os.path.join(folder, shard_name(source, f, num_files)), records[bounds[f] : bounds[f + 1]])
        for f in range(num_files)
    ]
    write_manifest(out_dir, build_manifest(files={source: files}, out_dir=out_dir))


def write_traces(out_dir: str, traces: list[AcceptedTrace], files_per_source: int = 2) -> None:
    """Traces through data_pipeline's writer (sorted by question key per source), with their manifest."""
    write_dataset(out_dir, traces, files_per_source=files_per_source)


def mixed_dataset(out_dir: str, n_text: int = 24, n_image: int = 16, seed: int = 0) -> dict[str, int]:
    """Two sources: text-only traces and traces with 1-2 images, varied lengths. Returns record counts."""
    rng = random.Random(seed)
    text = [make_trace("text_src", i, reasoning_words=rng.randint(5, 120), seed=seed) for i in range(n_text)]
    image = [
        make_trace("image_src", i, reasoning_words=rng.randint(5, 80), images=1 + i % 2, seed=seed)
        for i in range(n_image)
    ]
    write_traces(out_dir, text + image)
    return {"text_src": n_text, "image_src": n_image}


def data_config(data_dir: str, **overrides) -> DataConfig:
    base = dict(
        data_dir=data_dir,
        sources={"text_src": 1.0, "image_src": 1.0},
        seq_len=256,
        max_patches=256,
        batch_size=2,
        epochs=2,
        seed=1,
        max_open_rows=4,
        system_prompt="S.",
        read_threads=2,
        worker_buffer_size=4,
    )
    base.update(overrides)
    return DataConfig(**base)


def synthetic_example(index: int, grids: list[tuple[int, int, int]], n_text: int, seed: int = 0):
    """An Example from random token ids (no tokenizer): text, then each image's vision tokens."""
    rng = np.random.default_rng(seed + index)
    ids = list(rng.integers(10, 1000, size=n_text))
    for g in grids:
        pads = [MODEL_CFG.image_token_id] * (int(np.prod(g)) // 4)
        ids += [151652, *pads, 151653, *rng.integers(10, 1000, size=3)]
    ids = np.asarray(ids, np.int32)
    mask = np.zeros(len(ids), bool)
    mask[len(ids) // 2 :] = True
    pixels = [rng.standard_normal((int(np.prod(g)), 1176)).astype(np.float32) for g in grids]
    return make_example("syn", index, ids, mask, pixels, [np.asarray(g) for g in grids], MODEL_CFG)
