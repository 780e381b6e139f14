"""Image bins (`positions.image_bins`, `attention.image_attention`): the full-attention vision blocks attend within
bins of whole image frames instead of over the row, with the same result on every real patch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from octomed_jax.data.global_batch import abstract_train_batch
from octomed_jax.data.packing import empty_batch
from octomed_jax.models import attention, positions
from octomed_jax.models.config import VisionConfig, get_preset
from octomed_jax.models.families import init_model, vision_inputs_class
from octomed_jax.models.qwen2_5_vl import VisionInputs as Qwen25Inputs
from octomed_jax.models.qwen3_vl import VisionInputs as Qwen3Inputs

PAD_TO = 1024  # patch slots of a vision row
IMAGE_PATCHES = 120  # the bound the data path would take from max_pixels: bins of 128


def segments(sizes: list[int], total: int) -> np.ndarray:
    seg = np.zeros(total, np.int32)
    start = 0
    for i, n in enumerate(sizes, start=1):
        seg[start:start + n] = i
        start += n
    return seg


def test_bin_shape_and_the_7b_row():
    vision = VisionConfig()  # Qwen2.5-VL: 14-px patches, 2 x 2 merge
    assert positions.max_image_patches(262_144, vision) == 1336  # 512 x 512 at most: 36 x 36 = 1,296 after resize
    assert positions.image_bin_shape(8192, 1336) == (11, 1408)  # 11 x 1408^2 = 0.32 x 8192^2
    assert positions.image_bin_shape(1024, 120) == (15, 128)
    assert positions.image_bin_shape(1024, 600) is None  # 1 bin of 640^2 ... 3 bins: not cheaper than the row
    assert positions.image_bin_shape(1024, 0) is None


@pytest.mark.parametrize("seed", range(20))
def test_frames_packed_whole_in_order_each_slot_once(seed):
    rng = np.random.default_rng(seed)
    bins, length = positions.image_bin_shape(PAD_TO, IMAGE_PATCHES)
    sizes = []
    # Adversarial for the bound: frames just over half a bin fill one bin each.
    low = length // 2 + 1 if seed % 2 else 4
    while sum(sizes) + IMAGE_PATCHES <= PAD_TO - 4:
        sizes.append(int(rng.integers(low, IMAGE_PATCHES + 1)))
    seg = segments(sizes, PAD_TO)
    out = positions.image_bins(seg, bins, length)
    assert out.shape == (bins, length)
    filled = out[out >= 0]
    assert sorted(filled.tolist()) == np.flatnonzero(seg > 0).tolist()  # every real patch once, no padding
    for frame in range(1, len(sizes) + 1):
        where = np.argwhere(np.isin(out, np.flatnonzero(seg == frame)))
        assert len(set(where[:, 0])) == 1  # one bin
        assert out[where[0, 0], where[:, 1]].tolist() == np.flatnonzero(seg == frame).tolist()  # in order


def test_a_frame_larger_than_a_bin_is_an_error():
    with pytest.raises(ValueError, match="an image frame of 130 patches does not fit the vision bins of 128"):
        positions.image_bins(segments([60, 130], 512), 7, 128)


@pytest.mark.parametrize("impl", ["xla", "pallas_gpu"])
def test_image_attention_equals_the_masked_row(impl):
    cfg = get_preset("tiny", attention_impl=impl, attention_block_q=128, attention_block_kv=128)
    rng = np.random.default_rng(1)
    rows = [segments([100, 37, 120, 64, 8, 90], PAD_TO), segments([120] * 8, PAD_TO)]  # the second: 8 full frames
    bins = np.stack([positions.image_bins(s, *positions.image_bin_shape(PAD_TO, IMAGE_PATCHES)) for s in rows])
    seg = jnp.asarray(np.stack(rows))
    q, k, v = (jnp.asarray(rng.standard_normal((2, PAD_TO, 2, 16)), jnp.float32) for _ in range(3))
    cot = jnp.asarray(rng.standard_normal((2, PAD_TO, 2, 16)), jnp.float32) * (seg > 0)[..., None, None]

    def run(b):
        def loss(q, k, v):
            out = attention.image_attention(q, k, v, seg, b, cfg)
            return jnp.sum(out * cot), out
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)

    (_, binned), binned_grads = run(jnp.asarray(bins))
    (_, whole), whole_grads = run(None)
    real = np.asarray(seg) > 0
    np.testing.assert_allclose(np.asarray(binned)[real], np.asarray(whole)[real], atol=2e-6)
    for g, w in zip(binned_grads, whole_grads, strict=True):
        np.testing.assert_allclose(np.asarray(g)[real], np.asarray(w)[real], atol=2e-6)


@pytest.mark.parametrize("preset, inputs_cls", [("tiny_vocab", Qwen25Inputs), ("qwen3_vl_tiny", Qwen3Inputs)])
def test_tower_features_with_bins_equal_without(preset, inputs_cls):
    """The whole vision tower (Qwen2.5-VL: 2 full-attention of 4 blocks; Qwen3-VL: all blocks full, DeepStack)
    on two rows of images of several sizes, through the packed data path's layout with and without bins."""
    cfg = get_preset(preset)
    v = cfg.vision
    side = v.patch_size * v.spatial_merge_size
    grids = [[[1, 4, 6], [1, 10, 10], [1, 2, 2], [1, 8, 12]], [[1, 10, 12], [1, 6, 6]]]
    rng = np.random.default_rng(2)
    pixels = [rng.standard_normal((sum(int(np.prod(x)) for x in g), v.patch_dim)).astype(np.float32)
              for g in grids]
    plain = inputs_cls.stack_rows(list(zip(pixels, grids, strict=True)), cfg, PAD_TO)
    layouts = [positions.row_layout(np.asarray(g), v, PAD_TO, IMAGE_PATCHES) for g in grids]
    assert all("image_bins" in lay for lay in layouts) and side in (28, 32)
    binned = plain.replace(image_bins=jnp.asarray(np.stack([lay["image_bins"] for lay in layouts])))
    model = init_model(cfg, seed=0)
    features = nnx.jit(lambda m, x: m.image_features(x))
    (want, want_deep), (got, got_deep) = features(model, plain), features(model, binned)
    units = [sum(int(np.prod(x)) for x in g) // v.merge_unit for g in grids]
    for r, n in enumerate(units):
        np.testing.assert_allclose(np.asarray(got)[r, :n], np.asarray(want)[r, :n], atol=1e-5)
        if want_deep is not None:
            np.testing.assert_allclose(np.asarray(got_deep)[:, r, :n], np.asarray(want_deep)[:, r, :n], atol=1e-5)


def test_batches_carry_bins_where_the_data_path_bounds_images():
    vision = get_preset("tiny").vision
    batch = empty_batch(2, 64, PAD_TO, vision, image_patches=IMAGE_PATCHES)
    assert batch["image_bins"].shape == (2, 15, 128) and (batch["image_bins"] == -1).all()
    assert vision_inputs_class(k for k in batch if k not in ("input_ids", "targets", "loss_mask", "segment_ids",
                                                             "positions")) is Qwen25Inputs
    assert "image_bins" not in empty_batch(2, 64, PAD_TO, vision)  # no bound: the row as before
    abstract = abstract_train_batch(2, 64, PAD_TO, vision, image_patches=IMAGE_PATCHES)
    assert abstract.inputs.vision.image_bins.shape == (2, 15, 128)
    assert abstract_train_batch(2, 64, PAD_TO, vision).inputs.vision.image_bins is None
