"""The train step: assistant-token cross-entropy over micro-batches, one optimizer update.

The loss is summed over every micro-batch and divided by the number of loss tokens of the whole
global batch, so accumulating 4 micro-batches gives the gradient of one batch 4x larger, and a
sharded step gives the same update as an unsharded one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from octomed_jax.models.qwen2_5_vl import ModelInputs, Qwen25VL
from octomed_jax.training.loss import chunked_cross_entropy, select_loss_tokens


class Batch(Protocol):
    """What a step consumes (see `octomed_jax.data.TrainBatch`); arrays carry a leading micro-batch axis."""

    inputs: ModelInputs
    targets: jax.Array
    loss_mask: jax.Array


@dataclasses.dataclass(frozen=True)
class LossConfig:
    chunk: int = 1024  # positions per row per vocabulary-projection chunk
    max_loss_tokens: int | None = None  # per row; None: every position is a candidate


@struct.dataclass
class StepMetrics:
    loss: jax.Array  # mean cross-entropy per loss token over the global batch
    loss_tokens: jax.Array
    real_tokens: jax.Array  # non-padding tokens (segment id > 0)
    grad_norm: jax.Array  # after normalisation, before clipping
    dropped_loss_tokens: jax.Array  # loss tokens beyond max_loss_tokens (should stay 0)


def micro_batch_loss(
    model: Qwen25VL, inputs: ModelInputs, targets: jax.Array, loss_mask: jax.Array, loss_cfg: LossConfig
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """(summed loss, (loss tokens, dropped loss tokens)) of one micro-batch."""
    hidden = model.hidden_states(inputs)
    h, t, w, dropped = select_loss_tokens(hidden, targets, loss_mask.astype(jnp.float32), loss_cfg.max_loss_tokens)
    total = chunked_cross_entropy(h, t, w, model.language_model.logits, loss_cfg.chunk)
    return total, (jnp.sum(w), dropped)


def accumulate_gradients(model: Qwen25VL, batch: Batch, loss_cfg: LossConfig) -> tuple[Any, StepMetrics]:
    """Gradients of the mean loss over all micro-batches (leading axis of every batch array)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def micro(carry: tuple[Any, ...], mb: Batch) -> tuple[tuple[Any, ...], None]:
        grads, loss, count, dropped = carry

        def f(p: Any) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
            return micro_batch_loss(nnx.merge(graphdef, p, rest), mb.inputs, mb.targets, mb.loss_mask, loss_cfg)

        (mb_loss, (mb_count, mb_dropped)), mb_grads = jax.value_and_grad(f, has_aux=True)(params)
        grads = jax.tree.map(jnp.add, grads, mb_grads)
        return (grads, loss + mb_loss, count + mb_count, dropped + mb_dropped), None

    init = (jax.tree.map(jnp.zeros_like, params), jnp.zeros(()), jnp.zeros(()), jnp.zeros((), jnp.int32))
    (grads, loss, count, dropped), _ = jax.lax.scan(micro, init, batch)
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    metrics = StepMetrics(
        loss=loss / denom,
        loss_tokens=count,
        real_tokens=jnp.sum(batch.inputs.segment_ids > 0),
        grad_norm=optax.tree.norm(grads),
        dropped_loss_tokens=dropped,
    )
    return grads, metrics


def train_step(model: Qwen25VL, optimizer: nnx.Optimizer, batch: Batch, loss_cfg: LossConfig) -> StepMetrics:
    """One optimizer update from one global batch (mutates `model` and `optimizer`)."""
    grads, metrics = accumulate_gradients(model, batch, loss_cfg)
    optimizer.update(model, grads)
    return metrics


def jit_train_step(loss_cfg: LossConfig, model: Qwen25VL | None = None, optimizer: nnx.Optimizer | None = None) -> Any:
    """`train_step` compiled with `nnx.jit`; model and optimizer state are donated.

    Given `model` and `optimizer`, their arrays are committed where they are and the step returns their state
    with those shardings. Otherwise XLA chooses the output shardings itself (a replicated layer-norm scale may
    come back sharded over `fsdp`; an uncommitted array comes back committed), the second call sees new input
    shardings, and the step compiles again: minutes for a 7B model on a pod.
    """
    shardings = None
    if model is not None and optimizer is not None:
        state = nnx.state((model, optimizer))
        shardings = jax.tree.map(lambda x: x.sharding, state)
        nnx.update((model, optimizer), jax.device_put(state, shardings))

    def step(model: Qwen25VL, optimizer: nnx.Optimizer, batch: Batch) -> StepMetrics:
        metrics = train_step(model, optimizer, batch, loss_cfg)
        if shardings is not None:
            state = nnx.state((model, optimizer))
            nnx.update((model, optimizer), jax.lax.with_sharding_constraint(state, shardings))
        return metrics

    return nnx.jit(step, donate_argnums=(0, 1))
