"""Forward + backward time of our model against transformers on the same small model and batch (CPU).

  python benchmarks/bench_model.py [--family=qwen2_5_vl|qwen3_vl --layers=4 --width=128 --batch=4 --seq=256]

Both sides load the same weights (ours through `load_hf` from the folder transformers saved), run
the same batch (text plus one image per row), take the mean token cross-entropy over all positions
and its gradient with respect to every parameter. Prints seconds per step and the ratio.
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

    rng = np.random.RandomState(0)
    grid = [1, 8, 8]
    n_img = int(np.prod(grid)) // 4
    ids = rng.randint(10, 150000, size=(args.batch, args.seq))
    ids[:, 5] = 151652
    ids[:, 6 : 6 + n_img] = 151655
    ids[:, 6 + n_img] = 151653
    grids = np.array([grid] * args.batch)
    px = rng.randn(int(np.prod(grid)) * args.batch, cfg.vision.patch_dim).astype(np.float32)
    tokens = args.batch * args.seq

    batch = ours.prepare_inputs(ids, px, grids)
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

    kw = dict(input_ids=torch.tensor(ids), pixel_values=torch.tensor(px), image_grid_thw=torch.tensor(grids),
              mm_token_type_ids=torch.tensor((ids == 151655).astype(np.int64)))
    tlabels = torch.tensor(np.roll(ids, -1, axis=1))

    def torch_step():
        hf.zero_grad()
        logits = hf(**kw).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tlabels.reshape(-1))
        loss.backward()

    hf_s = time_it(torch_step)
    print(f"model: {args.family}, {args.layers} layers, width {args.width}, vocab {cfg.text.vocab_size}, vision depth "
          f"{cfg.vision.depth}; batch {args.batch} x {args.seq} tokens, one {grid} image per row")
    print(f"ours (jax.jit, fp32):  {ours_s * 1e3:8.1f} ms/step  {tokens / ours_s:8.0f} tokens/s")
    print(f"transformers (torch):  {hf_s * 1e3:8.1f} ms/step  {tokens / hf_s:8.0f} tokens/s")
    print(f"speed ratio ours / transformers: {hf_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
