"""The streaming packer (both budgets, best-fit vs first-fit, bounded open rows) and the packed arrays."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import packed_data_util as u  # noqa: E402

from octomed_jax.data import PackingStats, RowPacker, pack_rows  # noqa: E402
from octomed_jax.models.positions import vision_layout  # noqa: E402


def test_best_fit_and_first_fit_choose_different_rows():
    items = [(60, 0), (70, 0), (45, 0)]  # rows with 40, 30 and 55 tokens left; then 25 tokens
    for algorithm, want in (("best_fit", [["a"], ["b", "d"], ["c"]]), ("first_fit", [["a", "d"], ["b"], ["c"]])):
        p = RowPacker(100, 0, algorithm, max_open_rows=4)
        for name, (n, k) in zip("abc", items, strict=True):
            assert p.add(name, n, k) == []
        assert p.add("d", 25, 0) == []
        assert sorted(p.open_rows) == sorted(want), algorithm


def test_budgets_are_never_exceeded_and_nothing_is_lost():
    rng = random.Random(0)
    p = RowPacker(seq_len=1000, max_patches=64, algorithm="best_fit", max_open_rows=3)
    items = [(i, rng.randint(1, 600), rng.choice([0, 0, 16, 32, 64])) for i in range(500)]
    rows = []
    for item in items:
        closed = p.add(item, item[1], item[2])
        assert len(closed) <= 1 + 1  # the fullest row, and possibly the row the item filled exactly
        rows += closed
        assert len(p.open_rows) <= 3
    rows += p.flush()
    assert sorted(i for row in rows for i in row) == sorted(items)
    for row in rows:
        assert sum(n for _, n, _ in row) <= 1000 and sum(k for _, _, k in row) <= 64
    # Order within a row is arrival order (images must appear in token order).
    assert all([i for i, _, _ in row] == sorted(i for i, _, _ in row) for row in rows)
    with pytest.raises(ValueError, match="does not fit"):
        p.add("big", 1001, 0)


def test_patch_budget_opens_a_new_row():
    p = RowPacker(seq_len=1000, max_patches=64, max_open_rows=1)
    assert p.add("a", 10, 48) == []
    assert p.add("b", 10, 32) == [["a"]]  # tokens fit, patches do not
    assert p.open_rows == [["b"]]


def test_pack_rows_layout():
    grids = ([(1, 4, 6)], [], [(1, 8, 8)])
    exs = [u.synthetic_example(i, g, n) for i, (g, n) in enumerate(zip(grids, (5, 9, 4), strict=True))]
    out = pack_rows([exs, exs[1:2]], seq_len=128, max_patches=128, vcfg=u.MODEL_CFG.vision)
    n = [len(e) for e in exs]
    seg = out["segment_ids"][0]
    np.testing.assert_array_equal(seg[: sum(n)], np.repeat([1, 2, 3], n))
    assert (seg[sum(n) :] == 0).all() and (out["loss_mask"][0, sum(n) :] == 0).all()
    np.testing.assert_array_equal(out["positions"][0, :, n[0] : n[0] + n[1]], exs[1].positions)
    np.testing.assert_array_equal(out["targets"][0, : n[0]], exs[0].targets)
    # Vision: the row's images in token order, laid out as vision_layout of those grids.
    ref = vision_layout(np.array([[1, 4, 6], [1, 8, 8]]), u.MODEL_CFG.vision, pad_to=128)
    np.testing.assert_array_equal(out["window_index"][0], ref.window_index)
    np.testing.assert_array_equal(out["image_segment_ids"][0], ref.image_segment_ids)
    np.testing.assert_array_equal(out["pixel_values"][0, :24], exs[0].pixel_values)
    np.testing.assert_array_equal(out["pixel_values"][0, 24:88], exs[2].pixel_values)
    assert (out["pixel_values"][0, 88:] == 0).all()
    # A row without images: all vision padding, with the identity window order.
    assert (out["image_segment_ids"][1] == 0).all()
    np.testing.assert_array_equal(out["window_index"][1], np.arange(32))
    with pytest.raises(ValueError, match="exceeds"):
        pack_rows([exs], seq_len=128, max_patches=64, vcfg=u.MODEL_CFG.vision)

    stats = PackingStats(seq_len=128, max_patches=128)
    for row in ([*exs], exs[1:2]):
        stats.add_row(row)
    assert stats.efficiency == pytest.approx((sum(n) + n[1]) / 256)
    assert stats.patch_fill == pytest.approx(88 / 256)
    assert PackingStats.from_dict(stats.to_dict()) == stats
