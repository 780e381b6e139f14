"""Attention kernels (`octomed_jax.models.attention`) against the XLA reference, on tiny shapes.

The Pallas kernels run in interpret mode on CPU: the same code as on TPU/GPU, slow, so shapes stay tiny.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from octomed_jax import sharding
from octomed_jax.models import attention
from octomed_jax.models.config import get_preset
from octomed_jax.models.layers import attention_mask, dot_product_attention
from octomed_jax.models.positions import vision_layout
from octomed_jax.models.qwen2_5_vl import ModelInputs, VisionInputs, abstract_model, init_model

CFG = get_preset("tiny", attention_block_q=128, attention_block_kv=128)
B, T, N, K, H = 4, 256, 4, 2, 32  # grouped-query: 2 query heads per key/value head
IMAGE_TOKEN = CFG.image_token_id


def packed_rows(seq: int, seed: int = 0) -> tuple[jax.Array, ...]:
    """q, k, v and segment ids of B rows, each three packed examples then 0..39 padding slots."""
    rng = np.random.RandomState(seed)
    q, k, v = (jnp.asarray(rng.randn(B, seq, heads, H), jnp.float32) for heads in (N, K, K))
    seg = np.zeros((B, seq), np.int32)
    for b in range(B):
        a, c = sorted(rng.choice(np.arange(1, seq - 40), 2, replace=False))
        seg[b, :a], seg[b, a:c], seg[b, c:seq - rng.randint(0, 40)] = 1, 2, 3
    assert (seg == 0).any()  # padding is exercised
    return q, k, v, jnp.asarray(seg)


def value_and_grads(impl: str, q, k, v, seg):
    cfg = CFG.replace(attention_impl=impl)

    def loss(q, k, v):
        out = attention.self_attention(q, k, v, seg, causal=True, cfg=cfg)
        return jnp.sum(out * jnp.cos(out)), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


@pytest.fixture(scope="module")
def rows():
    return packed_rows(T)


@pytest.fixture(scope="module")
def reference(rows):
    return value_and_grads("xla", *rows)


@pytest.mark.parametrize("impl", ["splash", "pallas_gpu"])
def test_kernel_equals_xla_on_a_mesh(impl, rows, reference):
    """Packed rows with padding, GQA, batch and heads split over a data x fsdp x tensor mesh of 8 devices."""
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh):
        out, grads = value_and_grads(impl, *rows)
    np.testing.assert_allclose(out, reference[0], atol=2e-5)
    for g, ref in zip(grads, reference[1], strict=True):
        np.testing.assert_allclose(g, ref, atol=5e-5)


def test_auto_picks_the_kernel_of_the_platform():
    assert [attention.resolve_impl("auto", p) for p in ("tpu", "gpu", "cpu")] == ["splash", "pallas_gpu", "xla"]
    assert attention.resolve_impl("cudnn", "tpu") == "cudnn"
    assert attention.platform() == "cpu"
    with pytest.raises(ValueError, match="model.attention_impl 'flash'"):
        CFG.replace(attention_impl="flash")
    with pytest.raises(ValueError, match="model.attention_block_q=100"):
        CFG.replace(attention_block_q=100)


def test_tiles_per_kernel():
    """Splash takes the configured tiles; the Triton kernel one tile of at most 128 (shared memory, fused
    backward); both capped at the sequence, which is padded to a multiple of the tiles."""
    cfg = get_preset("tiny", attention_block_q=512, attention_block_kv=256)
    assert attention._tiles(8192, cfg, "splash") == (512, 256, 8192)
    assert attention._tiles(8000, cfg, "splash") == (512, 256, 8192)
    assert attention._tiles(8192, cfg, "pallas_gpu") == (128, 128, 8192)
    assert attention._tiles(200, cfg, "splash") == (256, 256, 256)
    assert attention._tiles(200, cfg, "pallas_gpu") == (128, 128, 256)


def test_windowed_vision_attention_equals_the_masked_row():
    """Two images of different sizes (partial windows at their edges) and padding in one vision row."""
    v = CFG.vision
    layout = vision_layout(np.array([[1, 6, 10], [1, 4, 6]]), v, pad_to=100)  # 84 patches + 16 padding
    seg = jnp.asarray(layout.window_segment_ids)[None]
    rng = np.random.RandomState(2)
    q, k, val = (jnp.asarray(rng.randn(1, 100, v.num_heads, v.head_dim), jnp.float32) for _ in range(3))
    assert v.window_patches == 16
    assert int(seg.max()) == 8 and np.bincount(layout.window_segment_ids)[1:].min() < 16  # partial windows
    windowed = jax.jit(attention.windowed_attention, static_argnums=4)(q, k, val, seg, v.window_patches)
    masked = jax.jit(lambda q, k, v, s: dot_product_attention(q, k, v, attention_mask(s, s, causal=False)))(
        q, k, val, seg)
    real = layout.num_patches
    np.testing.assert_allclose(windowed[:, :real], masked[:, :real], atol=1e-6)


def test_model_with_a_kernel_equals_xla_on_a_packed_batch():
    """The whole model through pallas_gpu == through xla: text layers (causal), vision full-attention blocks
    (48 patches padded to the 128 tile with a segment of their own, then cut off), windowed blocks."""
    grids = [[[1, 4, 6]], [[1, 6, 4], [1, 2, 2]]]
    rng = np.random.RandomState(3)
    seq = 128
    ids = rng.randint(10, 1000, size=(2, seq))
    seg = np.zeros((2, seq), np.int32)
    seg[:, :50], seg[:, 50:110] = 1, 2  # two packed examples, then 18 padding slots
    for r, g in enumerate(grids):  # each row's image tokens inside its second example
        n = sum(int(np.prod(x)) for x in g) // 4
        ids[r, 60:60 + n] = IMAGE_TOKEN
    positions = np.where(seg > 0, np.arange(seq) - np.where(seg == 2, 50, 0), 0)
    row_pixels = [rng.randn(sum(int(np.prod(x)) for x in g), CFG.vision.patch_dim) for g in grids]

    params = nnx.state(init_model(get_preset("tiny_vocab"), seed=0))  # initialised once: eager init is slow

    def hidden(impl: str) -> np.ndarray:
        cfg = get_preset("tiny_vocab", attention_impl=impl, attention_block_q=128, attention_block_kv=128)
        model = nnx.merge(nnx.graphdef(abstract_model(cfg)), params)
        inputs = ModelInputs(input_ids=jnp.asarray(ids, jnp.int32),
                             positions=jnp.asarray(np.broadcast_to(positions, (3, 2, seq)), jnp.int32),
                             segment_ids=jnp.asarray(seg),
                             vision=VisionInputs.stack_rows(list(zip(row_pixels, grids, strict=True)), cfg, 48))
        return np.asarray(nnx.jit(lambda m, x: m.hidden_states(x))(model, inputs))

    want, got = hidden("xla"), hidden("pallas_gpu")
    np.testing.assert_allclose(got[seg > 0], want[seg > 0], atol=2e-5)
