"""Forward + backward time of our model against transformers on the same small model and batch (CPU).

  python benchmarks/bench_model.py [--family=qwen2_5_vl|qwen3_vl|internvl --layers=4 --width=128 --batch=4 --seq=256]

Both sides load the same weights (ours through `load_hf` from the folder transformers saved), run
the same batch (text plus one image per row: an 8 x 8-patch grid, or one InternVL tile), take the mean
token cross-entropy over all positions and its gradient with respect to every parameter. Prints seconds
per step and the ratio.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from common import FAMILY_MODELS, same_model_both_sides, small_config
from flax import nnx

from octomed_jax.models.config import ModelConfig


def image_batch(cfg: ModelConfig, batch: int, seq: int) -> tuple[np.ndarray, tuple, dict, str]:
    """Random token ids with one image per row: (ids, our `prepare_inputs` arguments, transformers' keyword
    arguments, the image in words)."""
    rng = np.random.RandomState(0)
    ids = rng.randint(10, 150000, size=(batch, seq))
    if cfg.family == "internvl":
        side = cfg.vision.image_size
        ids[:, 6 : 6 + cfg.vision.num_tile_patches // cfg.vision.merge_unit] = cfg.image_token_id
        px = rng.randn(batch, cfg.vision.in_channels, side, side).astype(np.float32)
        return ids, (ids, px), {"input_ids": torch.tensor(ids), "pixel_values": torch.tensor(px)}, f"one {side}px tile"
    grid = [1, 8, 8]
    n_img = int(np.prod(grid)) // 4
    ids[:, 5] = 151652
    ids[:, 6 : 6 + n_img] = 151655
    ids[:, 6 + n_img] = 151653
    grids = np.array([grid] * batch)
    px = rng.randn(int(np.prod(grid)) * batch, cfg.vision.patch_dim).astype(np.float32)
    kw = {"input_ids": torch.tensor(ids), "pixel_values": torch.tensor(px), "image_grid_thw": torch.tensor(grids),
          "mm_token_type_ids": torch.tensor((ids == 151655).astype(np.int64))}
    return ids, (ids, px, grids), kw, f"one {grid} image"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--family", choices=sorted(FAMILY_MODELS), default="qwen2_5_vl")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()

    cfg = small_config(args.layers, args.width, args.family)
    hf, ours = same_model_both_sides(cfg)

    ids, our_args, kw, image = image_batch(cfg, args.batch, args.seq)
    tokens = args.batch * args.seq

    batch = ours.prepare_inputs(*our_args)
    labels = jnp.asarray(np.roll(ids, -1, axis=1))

    @nnx.jit
    def step(model, batch, labels):
        def loss_fn(model):
            logits = model.forward(batch)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return nnx.value_and_grad(loss_fn)(model)

    def time_it(fn) -> float:
        fn()  # compile / warm up
        t = time.perf_counter()
        for _ in range(args.steps):
            fn()
        return (time.perf_counter() - t) / args.steps

    ours_s = time_it(lambda: jax.block_until_ready(step(ours, batch, labels)))

    tlabels = torch.tensor(np.roll(ids, -1, axis=1))

    def torch_step():
        hf.zero_grad()
        logits = hf(**kw).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tlabels.reshape(-1))
        loss.backward()

    hf_s = time_it(torch_step)
    print(f"model: {args.family}, {args.layers} layers, width {args.width}, vocab {cfg.text.vocab_size}, vision depth "
          f"{cfg.vision.depth}; batch {args.batch} x {args.seq} tokens, {image} per row")
    print(f"ours (jax.jit, fp32):  {ours_s * 1e3:8.1f} ms/step  {tokens / ours_s:8.0f} tokens/s")
    print(f"transformers (torch):  {hf_s * 1e3:8.1f} ms/step  {tokens / hf_s:8.0f} tokens/s")
    print(f"speed ratio ours / transformers: {hf_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
