"""Our Qwen2.5-VL against transformers' PyTorch model, fp32, max abs logit difference <= 1e-4."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import IMAGE, hf_logits, hf_model, image_prompt, pixels, torch

from octomed_jax.hf import load_hf
from octomed_jax.models import positions
from octomed_jax.models.qwen2_5_vl import VisionInputs

TOL = 1e-4


def max_diff(a, b):
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


def test_text_only(ours, hf_checkpoint):
    hf, _ = hf_checkpoint
    ids = np.random.RandomState(1).randint(0, 150000, size=(2, 23))
    assert max_diff(ours(ids), hf_logits(hf, ids)) <= TOL


def test_one_image(ours, hf_checkpoint, tiny_cfg):
    hf, _ = hf_checkpoint
    grids = [[1, 8, 12]]  # 6 x 4 merged units: several 2x2-unit windows, one partial
    ids = image_prompt(grids, [5, 7])[None]
    px = pixels(grids, tiny_cfg.vision.patch_dim)
    ref = hf_logits(hf, ids, px, grids)
    assert max_diff(ours(ids, px, np.array(grids)), ref) <= TOL


def test_two_images_of_different_sizes(ours, hf_checkpoint, tiny_cfg):
    hf, _ = hf_checkpoint
    grids = [[1, 6, 10], [1, 14, 4]]
    ids = image_prompt(grids, [3, 4, 6])[None]
    px = pixels(grids, tiny_cfg.vision.patch_dim, seed=1)
    assert max_diff(ours(ids, px, np.array(grids)), hf_logits(hf, ids, px, grids)) <= TOL


def test_batch_of_two_with_padding(ours, hf_checkpoint, tiny_cfg):
    """Left padding, an image in each row: positions follow the attention mask, pads are ignored."""
    hf, _ = hf_checkpoint
    grids = [[1, 4, 4], [1, 6, 8]]
    a, b = image_prompt(grids[:1], [2, 3], start=3), image_prompt(grids[1:], [6, 5], start=4)
    length = max(len(a), len(b))
    ids = np.zeros((2, length), np.int64)
    mask = np.zeros((2, length), np.int64)
    for row, seq in enumerate((a, b)):
        ids[row, length - len(seq):] = seq
        mask[row, length - len(seq):] = 1
    px = pixels(grids, tiny_cfg.vision.patch_dim, seed=2)
    ref = hf_logits(hf, ids, px, grids, attention_mask=mask)
    got = np.asarray(ours(ids, px, np.array(grids), mask))
    real = mask.astype(bool)
    assert max_diff(got[real], ref[real]) <= TOL


def test_text_batch_with_padding_and_explicit_positions(ours, hf_checkpoint, tiny_cfg):
    hf, _ = hf_checkpoint
    ids = np.random.RandomState(5).randint(0, 150000, size=(2, 12))
    mask = np.ones_like(ids)
    mask[0, :4] = 0
    pos, _ = positions.rope_index(ids, None, mask, tiny_cfg)
    ref = hf_logits(hf, ids, attention_mask=mask, position_ids=pos)
    got = np.asarray(ours(ids, attention_mask=mask))
    assert max_diff(got[mask.astype(bool)], ref[mask.astype(bool)]) <= TOL


def test_vision_tower_alone(ours, hf_checkpoint, tiny_cfg):
    hf, _ = hf_checkpoint
    grids = np.array([[1, 10, 6], [1, 4, 8], [2, 4, 4]])  # the last has two frames (video-like)
    px = pixels(grids, tiny_cfg.vision.patch_dim, seed=3)
    with torch.no_grad():
        ref = hf.model.visual(torch.tensor(px), grid_thw=torch.tensor(grids)).pooler_output.numpy()
    v = VisionInputs.build(px, grids, tiny_cfg)
    got = ours.visual(v.pixel_values, v.window_index, v.rotary_positions, v.image_segment_ids, v.window_segment_ids)
    assert max_diff(got[0], ref) <= TOL


def test_vision_padding_changes_nothing(ours, tiny_cfg):
    grids = np.array([[1, 6, 6]])
    px = pixels(grids, tiny_cfg.vision.patch_dim, seed=4)
    run = lambda v: ours.visual(  # noqa: E731
        v.pixel_values, v.window_index, v.rotary_positions, v.image_segment_ids, v.window_segment_ids)
    plain = run(VisionInputs.build(px, grids, tiny_cfg))
    padded = run(VisionInputs.build(px, grids, tiny_cfg, pad_to=64))
    assert padded.shape == (1, 16, tiny_cfg.text.hidden_size)
    np.testing.assert_allclose(padded[0, : plain.shape[1]], plain[0], atol=1e-6)


def test_one_vision_row_per_token_row_equals_one_list(ours, tiny_cfg):
    """Packed batches give each token row its own vision row; the logits must not change."""
    grids = [[[1, 4, 6], [1, 2, 2]], [], [[1, 6, 4]]]
    rows = [image_prompt(g, [3] + [2] * len(g), start=r) if g else np.arange(20, 31) for r, g in enumerate(grids)]
    length = max(map(len, rows))
    ids = np.zeros((3, length), np.int64)
    for r, seq in enumerate(rows):
        ids[r, : len(seq)] = seq
    mask = (np.arange(length)[None] < np.array([len(x) for x in rows])[:, None]).astype(np.int64)
    row_pixels = [pixels(g, tiny_cfg.vision.patch_dim, seed=r) if g else None for r, g in enumerate(grids)]
    flat_grids = np.array([g for row in grids for g in row])
    flat_pixels = np.concatenate([p for p in row_pixels if p is not None])
    one_list = ours.prepare_inputs(ids, flat_pixels, flat_grids, mask)
    per_row = one_list.replace(vision=VisionInputs.stack_rows(list(zip(row_pixels, grids, strict=True)), tiny_cfg,
                                                              pad_to=48))
    assert per_row.vision.pixel_values.shape == (3, 48, tiny_cfg.vision.patch_dim)
    want, got = np.asarray(ours.forward(one_list)), np.asarray(ours.forward(per_row))
    assert max_diff(got[mask.astype(bool)], want[mask.astype(bool)]) <= 1e-5


@pytest.mark.parametrize("with_mask", [False, True])
def test_3d_positions(hf_checkpoint, tiny_cfg, with_mask):
    hf, _ = hf_checkpoint
    grids = [[1, 4, 6], [1, 8, 4], [1, 2, 2]]
    rows = [image_prompt(grids[:2], [3, 2, 4], start=7), image_prompt(grids[2:], [5, 9], start=8)]
    length = max(map(len, rows))
    ids = np.zeros((2, length), np.int64)
    mask = np.zeros_like(ids)
    for r, seq in enumerate(rows):
        ids[r, length - len(seq):] = seq
        mask[r, length - len(seq):] = 1
    if not with_mask:
        ids, mask = ids[:1, length - len(rows[0]):], None
        grids = grids[:2]
    ref_pos, ref_delta = hf.model.get_rope_index(
        torch.tensor(ids), mm_token_type_ids=torch.tensor((ids == IMAGE).astype(np.int64)),
        image_grid_thw=torch.tensor(grids), attention_mask=None if mask is None else torch.tensor(mask))
    pos, delta = positions.rope_index(ids, np.array(grids), mask, tiny_cfg)
    np.testing.assert_array_equal(pos, ref_pos.numpy())
    np.testing.assert_array_equal(delta, ref_delta.numpy().reshape(-1))
    assert (pos[0] != pos[1]).any() and (pos[1] != pos[2]).any()  # T, H, W really differ


def test_swapped_mrope_sections_are_caught(tmp_path, tiny_cfg):
    """The section split (2, 3, 3) is uneven: a port that assigns T/H/W chunks wrongly must fail.

    Sharp attention (large q/k weights) and a low rope theta make positions matter to the logits.
    """
    text = dataclasses.replace(tiny_cfg.text, rope_theta=50.0)
    cfg = tiny_cfg.replace(text=text)
    hf = hf_model(cfg, seed=1)
    with torch.no_grad():
        for layer in hf.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(25.0)
            layer.self_attn.k_proj.weight.mul_(25.0)
    hf.save_pretrained(tmp_path)
    grids = [[1, 8, 8]]
    ids = image_prompt(grids, [4, 6])[None]
    px = pixels(grids, cfg.vision.patch_dim)
    ref = hf_logits(hf, ids, px, grids)
    right = load_hf(str(tmp_path))
    assert max_diff(right(ids, px, np.array(grids)), ref) <= TOL
    swapped = load_hf(str(tmp_path))
    swapped.cfg = cfg.replace(text=dataclasses.replace(text, mrope_section=(3, 3, 2)))
    assert max_diff(swapped(ids, px, np.array(grids)), ref) > 1e-2


def test_unrolled_and_remat_equal_scan(hf_checkpoint, tiny_cfg):
    _, path = hf_checkpoint
    grids = [[1, 4, 8]]
    ids = image_prompt(grids, [3, 3])[None]
    px = pixels(grids, tiny_cfg.vision.patch_dim)
    base = load_hf(path)(ids, px, np.array(grids))
    for overrides in ({"scan_layers": False}, {"remat_policy": "full"}, {"remat_policy": "nothing_saveable"}):
        assert max_diff(load_hf(path, **overrides)(ids, px, np.array(grids)), base) <= 1e-5, overrides


def test_bf16_compute_within_stated_tolerance(hf_checkpoint, tiny_cfg):
    """bf16 compute (fp32 params) vs fp32: logits within 0.05 absolute, top-1 agreement >= 95%.

    bf16 keeps 8 bits of mantissa (relative error ~4e-3 per op); through 2 vision blocks, 2 decoder
    layers and a 64-wide head on logits of magnitude ~1 the observed error is ~1e-2.
    """
    _, path = hf_checkpoint
    grids = [[1, 4, 8]]
    ids = image_prompt(grids, [20, 20])[None]
    px = pixels(grids, tiny_cfg.vision.patch_dim)
    fp32 = np.asarray(load_hf(path)(ids, px, np.array(grids)))
    bf16_model = load_hf(path, compute_dtype="bfloat16")
    bf16 = bf16_model(ids, px, np.array(grids))
    assert bf16.dtype == jnp.bfloat16
    assert jax.tree.leaves(bf16_model)[0].dtype == jnp.float32
    bf16 = np.asarray(bf16, np.float32)
    assert max_diff(bf16, fp32) <= 0.05
    assert (bf16.argmax(-1) == fp32.argmax(-1)).mean() >= 0.95
    assert max_diff(bf16, fp32) > 0  # really computed in bf16
