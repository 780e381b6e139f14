"""Cross-entropy on assistant tokens only, without materialising [tokens, vocab] logits.

Each row's hidden states are projected to the vocabulary a chunk of positions at a time inside a
rematerialised scan over the sequence axis. The batch axis stays sharded as the data is (a chunk is
[rows, chunk, embed]) and the vocabulary stays sharded over `tensor`, so peak memory is one chunk's
logits per device ([local rows, chunk, vocab / tensor]), and the backward pass recomputes each chunk
instead of keeping it. Positions without loss can be skipped altogether (`max_tokens_per_row`): short
answers after long prompts then cost only their own tokens in the vocabulary projection, which
dominates small models.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def select_loss_tokens(
    hidden: jax.Array, targets: jax.Array, weights: jax.Array, max_tokens_per_row: int | None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Keeps, in each row, only the first `max_tokens_per_row` positions that carry loss.

    Args:
      hidden: [batch, seq, embed]; targets, weights: [batch, seq].
      max_tokens_per_row: positions kept per row; None keeps the whole sequence.

    Returns:
      hidden [batch, k, embed], targets [batch, k], weights [batch, k] (0 on filler positions) and the
      number of loss positions that did not fit (the trainer reports it; it should stay 0).
    """
    seq = weights.shape[1]
    if max_tokens_per_row is None or max_tokens_per_row >= seq:
        return hidden, targets, weights, jnp.zeros((), jnp.int32)
    k = max_tokens_per_row
    has_loss = weights > 0
    idx = jax.vmap(lambda row: jnp.nonzero(row, size=k, fill_value=0)[0])(has_loss)  # [batch, k]
    count = jnp.sum(has_loss, axis=1)
    kept = jnp.arange(k)[None, :] < count[:, None]
    hidden = jnp.take_along_axis(hidden, idx[..., None], axis=1)
    targets = jnp.take_along_axis(targets, idx, axis=1)
    weights = jnp.where(kept, jnp.take_along_axis(weights, idx, axis=1), 0)
    return hidden, targets, weights, jnp.sum(jnp.maximum(count - k, 0)).astype(jnp.int32)


def chunked_cross_entropy(
    hidden: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    logits_fn: Callable[[jax.Array], jax.Array],
    chunk: int,
) -> jax.Array:
    """Sum over positions of weight * cross-entropy(logits_fn(hidden), target), in fp32.

    Args:
      hidden: [batch, n, embed] final hidden states.
      targets: [batch, n] int target ids.
      weights: [batch, n] loss weights (1 on assistant tokens, 0 elsewhere).
      logits_fn: hidden [..., embed] -> logits [..., vocab] (the model's head).
      chunk: positions per row per chunk; n is padded up to a multiple.
    """
    b, n, d = hidden.shape
    chunk = min(chunk, n)
    pad = -n % chunk
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    weights = jnp.pad(weights.astype(jnp.float32), ((0, 0), (0, pad)))
    steps = (n + pad) // chunk
    # [chunks, batch, chunk, ...]: the scan walks the sequence; the batch axis keeps its sharding.
    xs = (
        hidden.reshape(b, steps, chunk, d).swapaxes(0, 1),
        targets.reshape(b, steps, chunk).swapaxes(0, 1),
        weights.reshape(b, steps, chunk).swapaxes(0, 1),
    )

    @jax.checkpoint
    def chunk_loss(h: jax.Array, t: jax.Array, w: jax.Array) -> jax.Array:
        logits = logits_fn(h).astype(jnp.float32)
        logz = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        return jnp.sum(w * (logz - picked))

    def body(total: jax.Array, x: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        return total + chunk_loss(*x), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)
    return total
