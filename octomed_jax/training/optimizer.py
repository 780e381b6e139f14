"""AdamW with warmup + cosine decay, gradient clipping, and freezing of whole towers.

Weight decay skips norms and biases (vectors); frozen parts (`vision`, `merger`, `language`) get zero
updates and keep no optimizer moments.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import optax

PARTS = ("vision", "merger", "language")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with a warmup + cosine (or constant) schedule.

    Attributes:
      learning_rate: peak learning rate.
      schedule: "cosine" or "constant" (after the warmup).
      warmup_ratio: fraction of the run's steps spent warming up linearly from 0.
      final_lr_ratio: the cosine's end value as a fraction of the peak.
      weight_decay: decoupled weight decay (matrices only; norms and biases are not decayed).
      b1, b2, eps: Adam's moment decays and epsilon.
      grad_clip: global-norm clipping threshold (0: none).
      freeze: parts that get no updates and keep no moments, any of PARTS.
    """

    learning_rate: float = 5e-5
    schedule: str = "cosine"
    warmup_ratio: float = 0.1
    final_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0
    freeze: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.freeze) - set(PARTS)
        if unknown:
            raise ValueError(f"optim.freeze has unknown parts {sorted(unknown)}; use {PARTS}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"optim.schedule {self.schedule!r}; use 'cosine' or 'constant'")

    @classmethod
    def from_config(cls, optim: ml_collections.ConfigDict | dict[str, Any]) -> OptimConfig:
        """From a config's `optim` section (every field of this class, by name)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = dict(optim)
        unknown = set(values) - fields
        if unknown:
            raise ValueError(f"optim has unknown fields {sorted(unknown)}; known: {sorted(fields)}")
        values["freeze"] = tuple(values.get("freeze", ()))
        return cls(**values)


def part_of(path: tuple[Any, ...]) -> str:
    """Which trainable part a parameter path belongs to."""
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    if names[0] == "visual":
        return "merger" if names[1] == "merger" else "vision"
    return "language"


def learning_rate_schedule(optim: OptimConfig, total_steps: int) -> optax.Schedule:
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


def make_optimizer(
    optim: OptimConfig | ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, Any]:
    """The optax transformation and its learning-rate schedule.

    Args:
      optim: the optimizer's settings (a config's `optim` section is read through `OptimConfig.from_config`).
      total_steps: optimizer steps of the whole run (for the schedule).
    """
    if not isinstance(optim, OptimConfig):
        optim = OptimConfig.from_config(optim)
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
