"""Synthetic packed batches for train-step tests (no tokenizer or pipeline needed); a compile counter."""

import contextlib
import logging
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from octomed_jax.data import TrainBatch as Batch
from octomed_jax.models import positions
from octomed_jax.models.config import ModelConfig
from octomed_jax.models.qwen2_5_vl import ModelInputs, VisionInputs

IMAGE = 151655


def example(rng, n_prompt, n_answer, grid=None):
    """(ids, loss mask over the answer, grid or None): prompt (optionally with an image), then answer."""
    ids = list(rng.randint(10, 5000, size=n_prompt))
    if grid is not None:
        ids[1:1] = [151652] + [IMAGE] * (int(np.prod(grid)) // 4) + [151653]
    answer = list(rng.randint(10, 5000, size=n_answer))
    return np.array(ids + answer), np.array([0] * (len(ids) - 1) + [1] * n_answer + [0]), grid


def pack_rows(cfg: ModelConfig, rows, seq_len, max_patches, seed=0):
    """rows: lists of examples -> numpy arrays of one packed batch (per-row vision)."""
    b = len(rows)
    ids = np.zeros((b, seq_len), np.int32)
    targets = np.zeros_like(ids)
    loss = np.zeros((b, seq_len), np.float32)
    seg = np.zeros_like(ids)
    pos = np.zeros((3, b, seq_len), np.int32)
    vision_rows = []
    rng = np.random.RandomState(seed)
    for r, row in enumerate(rows):
        at, grids = 0, []
        for k, (x, m, grid) in enumerate(row):
            n = len(x)
            ids[r, at : at + n] = x
            targets[r, at : at + n - 1] = x[1:]
            loss[r, at : at + n] = m
            seg[r, at : at + n] = k + 1
            p, _ = positions.rope_index(x[None], None if grid is None else np.array([grid]), None, cfg)
            pos[:, r, at : at + n] = p[:, 0]
            at += n
            if grid is not None:
                grids.append(grid)
        n_patches = int(sum(np.prod(g) for g in grids))
        px = rng.randn(n_patches, cfg.vision.patch_dim).astype(np.float32) if grids else None
        vision_rows.append((px, np.array(grids).reshape(-1, 3)))
    vision = VisionInputs.stack_rows(vision_rows, cfg, pad_to=max_patches)
    inputs = ModelInputs(jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(seg), vision)
    return Batch(inputs, jnp.asarray(targets), jnp.asarray(loss))


def with_micro_axis(batch, micro):
    """[B, ...] -> [micro, B / micro, ...] (positions: [3, B, L] -> [micro, 3, B / micro, L])."""
    def split(x, axis):
        x = jnp.moveaxis(x, axis, 0)
        x = x.reshape(micro, x.shape[0] // micro, *x.shape[1:])
        return jnp.moveaxis(x, 1, axis + 1)
    inputs = batch.inputs
    return Batch(
        ModelInputs(split(inputs.input_ids, 0), split(inputs.positions, 1), split(inputs.segment_ids, 0),
                    jax.tree.map(lambda x: split(x, 0), inputs.vision)),
        split(batch.targets, 0),
        split(batch.loss_mask, 0),
    )


@contextlib.contextmanager
def compiles(name: str) -> Iterator[list[str]]:
    """Collects a line for each XLA compilation of `jit(name)` inside the block (from JAX's compile log)."""
    seen: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith(f"Finished XLA compilation of jit({name})"):
                seen.append(message)

    handler, logger = Handler(), logging.getLogger("jax._src.dispatch")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            yield seen
    finally:
        logger.removeHandler(handler)
