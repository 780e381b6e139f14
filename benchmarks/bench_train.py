"""Train-step time of ours (jit, AdamW, assistant-token loss) against transformers + torch AdamW on CPU.

  python benchmarks/bench_train.py [--layers=4 --width=128 --batch=8 --seq=256 --steps=5 --loss_fraction=1.0]

Same weights (ours loaded with `load_hf` from the folder transformers saved), same text batch, loss on
the last `loss_fraction` of each row (1.0: every position, as a plain LM step), one optimizer update per
step. `--loss_fraction` below 1 shows what gathering only the loss positions saves.
"""

from __future__ import annotations

import argparse
import time

import jax
import ml_collections
import numpy as np
import torch
from common import same_model_both_sides, small_config
from flax import nnx

from octomed_jax.data import TrainBatch
from octomed_jax.training.optimizer import make_optimizer
from octomed_jax.training.step import LossConfig, jit_train_step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--loss_fraction", type=float, default=1.0)
    args = p.parse_args()

    cfg = small_config(args.layers, args.width)
    hf, model = same_model_both_sides(cfg)

    rng = np.random.RandomState(0)
    ids = rng.randint(10, 150000, size=(args.batch, args.seq))
    targets = np.roll(ids, -1, axis=1)
    loss_mask = np.zeros(ids.shape, np.float32)
    loss_mask[:, int(args.seq * (1 - args.loss_fraction)) : -1] = 1
    n_loss = int(loss_mask.sum())

    optim = ml_collections.ConfigDict(dict(learning_rate=1e-4, schedule="constant", warmup_ratio=0.0,
                                           final_lr_ratio=0.0, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8,
                                           grad_clip=0.0, freeze=[]))
    optimizer = nnx.Optimizer(model, make_optimizer(optim, 100)[0], wrt=nnx.Param)
    inputs = model.prepare_inputs(ids)
    batch = TrainBatch(inputs, jax.numpy.asarray(targets), jax.numpy.asarray(loss_mask))
    batch = jax.tree.map(lambda x: x[None], batch)  # one micro-batch
    max_loss = n_loss // args.batch if args.loss_fraction < 1 else None  # per row
    step = jit_train_step(LossConfig(chunk=512, max_loss_tokens=max_loss), model, optimizer)

    def time_it(fn) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(args.steps):
            fn()
        return (time.perf_counter() - t) / args.steps

    ours_s = time_it(lambda: jax.block_until_ready(step(model, optimizer, batch).loss))

    torch_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.0)
    tids, tt, tm = torch.tensor(ids), torch.tensor(targets), torch.tensor(loss_mask)

    def torch_step() -> None:
        torch_opt.zero_grad()
        logits = hf(input_ids=tids).logits
        losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tt.reshape(-1),
                                                   reduction="none")
        ((losses * tm.reshape(-1)).sum() / tm.sum()).backward()
        torch_opt.step()

    hf_s = time_it(torch_step)
    tokens = args.batch * args.seq
    print(f"model: {args.layers} layers, width {args.width}, vocab {cfg.text.vocab_size}; batch {args.batch} x "
          f"{args.seq}, loss on {n_loss} tokens ({args.loss_fraction:.0%} of positions)")
    print(f"ours (jax.jit, AdamW):         {ours_s * 1e3:8.1f} ms/step  {tokens / ours_s:8.0f} tokens/s")
    print(f"transformers + torch AdamW:    {hf_s * 1e3:8.1f} ms/step  {tokens / hf_s:8.0f} tokens/s")
    print(f"speed ratio ours / transformers: {hf_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
