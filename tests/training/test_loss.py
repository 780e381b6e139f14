"""The chunked loss equals the direct one, with and without gathering the loss positions."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from octomed_jax.training.loss import chunked_cross_entropy, select_loss_tokens


def problem(seed=0, b=3, n=37, d=8, v=50):
    rng = np.random.RandomState(seed)
    hidden = jnp.asarray(rng.randn(b, n, d), jnp.float32)
    head = jnp.asarray(rng.randn(d, v), jnp.float32)
    targets = jnp.asarray(rng.randint(0, v, size=(b, n)))
    weights = np.zeros((b, n), np.float32)
    weights[0, 30:] = 1  # different numbers of loss positions per row
    weights[1, 5:9] = 1
    weights[2, ::3] = 1
    return hidden, head, targets, jnp.asarray(weights)


def direct(hidden, head, targets, weights):
    ce = optax.softmax_cross_entropy_with_integer_labels(hidden @ head, targets)
    return float(jnp.sum(ce * weights))


def test_chunked_equals_direct_for_any_chunk():
    hidden, head, targets, weights = problem()
    want = direct(hidden, head, targets, weights)
    for chunk in (1, 5, 16, 37, 100):
        got = float(chunked_cross_entropy(hidden, targets, weights, lambda h: h @ head, chunk))
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_gathering_loss_positions_keeps_loss_and_gradient():
    hidden, head, targets, weights = problem(1)

    def loss(h, max_per_row):
        hs, ts, ws, dropped = select_loss_tokens(h, targets, weights, max_per_row)
        return chunked_cross_entropy(hs, ts, ws, lambda x: x @ head, 4), dropped

    full, _ = loss(hidden, None)
    gathered, dropped = loss(hidden, 13)  # the fullest row has 13 loss positions
    assert int(dropped) == 0
    np.testing.assert_allclose(float(gathered), float(full), rtol=1e-6)
    g_full = jax.grad(lambda h: loss(h, None)[0])(hidden)
    g_gathered = jax.grad(lambda h: loss(h, 13)[0])(hidden)
    np.testing.assert_allclose(g_gathered, g_full, rtol=1e-5, atol=1e-7)
    _, dropped = loss(hidden, 5)
    assert int(dropped) == (7 - 5) + (13 - 5)  # rows 0 and 2 lose positions; row 1 (4 positions) fits
