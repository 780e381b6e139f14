"""Cross-entropy on assistant tokens only, without materialising [tokens, vocab] logits.

The hidden states of the loss positions are projected to the vocabulary a chunk of tokens at a time
inside a rematerialised scan: peak memory is one chunk's logits ([chunk, vocab / tensor] per device,
the vocabulary staying sharded over `tensor`), and the backward pass recomputes each chunk instead of
keeping it. Positions without loss can be skipped altogether (`max_loss_tokens`): short answers after
long prompts then cost only their own tokens in the vocabulary projection, which dominates small models.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def select_loss_tokens(
    hidden: jax.Array, targets: jax.Array, weights: jax.Array, max_tokens: int | None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Flattens [batch, seq, ...] and, with `max_tokens`, keeps only the first `max_tokens` weighted positions.

    Returns hidden [n, embed], targets [n], weights [n] and the number of weighted positions that did
    not fit (0 unless `max_tokens` is smaller than the batch's loss tokens; the trainer reports it).
    """
    d = hidden.shape[-1]
    hidden, targets, weights = hidden.reshape(-1, d), targets.reshape(-1), weights.reshape(-1)
    if max_tokens is None or max_tokens >= weights.shape[0]:
        return hidden, targets, weights, jnp.zeros((), jnp.int32)
    (idx,) = jnp.nonzero(weights > 0, size=max_tokens, fill_value=0)
    kept = jnp.arange(max_tokens) < jnp.sum(weights > 0)
    dropped = jnp.maximum(jnp.sum(weights > 0) - max_tokens, 0).astype(jnp.int32)
    return hidden[idx], targets[idx], jnp.where(kept, weights[idx], 0), dropped


def chunked_cross_entropy(
    hidden: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    logits_fn: Callable[[jax.Array], jax.Array],
    chunk: int,
) -> jax.Array:
    """Sum over tokens of weight * cross-entropy(logits_fn(hidden), target), in fp32.

    Args:
      hidden: [n, embed] final hidden states.
      targets: [n] int target ids.
      weights: [n] loss weights (1 on assistant tokens, 0 elsewhere).
      logits_fn: hidden [c, embed] -> logits [c, vocab] (the model's head).
      chunk: tokens per chunk; n is padded up to a multiple.
    """
    n = hidden.shape[0]
    chunk = min(chunk, n)
    pad = -n % chunk
    hidden = jnp.pad(hidden, ((0, pad), (0, 0)))
    targets = jnp.pad(targets, (0, pad))
    weights = jnp.pad(weights.astype(jnp.float32), (0, pad))
    xs = (hidden.reshape(-1, chunk, hidden.shape[-1]), targets.reshape(-1, chunk), weights.reshape(-1, chunk))

    @jax.checkpoint
    def chunk_loss(h: jax.Array, t: jax.Array, w: jax.Array) -> jax.Array:
        logits = logits_fn(h).astype(jnp.float32)
        logz = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0]
        return jnp.sum(w * (logz - picked))

    def body(total: jax.Array, x: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        return total + chunk_loss(*x), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)
    return total
