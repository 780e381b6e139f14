"""AdamW with warmup + cosine decay, gradient clipping, and freezing of whole towers.

Weight decay skips norms and biases (vectors); frozen parts (`vision`, `merger`, `language`) get zero
updates and keep no optimizer moments.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

PARTS = ("vision", "merger", "language")


def part_of(path: tuple[Any, ...]) -> str:
    """Which trainable part a parameter path belongs to."""
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    if names[0] == "visual":
        return "merger" if names[1] == "merger" else "vision"
    return "language"


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    warmup = int(round(optim.warmup_ratio * total_steps))
    if optim.schedule == "constant":
        ramp = optax.linear_schedule(0.0, optim.learning_rate, max(warmup, 1))
        return optax.join_schedules([ramp, optax.constant_schedule(optim.learning_rate)], [max(warmup, 1)])
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.learning_rate,
        warmup_steps=max(warmup, 1),
        decay_steps=max(total_steps, warmup + 1),
        end_value=optim.learning_rate * optim.final_lr_ratio,
    )


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation, Any]:
    """The optax transformation and its learning-rate schedule.

    Args:
      optim: `learning_rate`, `schedule` ("cosine" or "constant"), `warmup_ratio`, `final_lr_ratio`,
        `weight_decay`, `b1`, `b2`, `eps`, `grad_clip` (0: none), `freeze` (a list of PARTS).
      total_steps: optimizer steps of the whole run (for the schedule).
    """
    unknown = set(optim.freeze) - set(PARTS)
    if unknown:
        raise ValueError(f"optim.freeze has unknown parts {sorted(unknown)}; use {PARTS}")
    schedule = learning_rate_schedule(optim, total_steps)
    adamw = optax.adamw(
        schedule,
        b1=optim.b1,
        b2=optim.b2,
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params),
    )
    tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip), adamw) if optim.grad_clip > 0 else adamw
    if optim.freeze:
        labels = lambda params: jax.tree_util.tree_map_with_path(  # noqa: E731
            lambda path, _: "frozen" if part_of(path) in optim.freeze else "train", params
        )
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule
