"""Host-side position rules of Qwen2.5-VL, in NumPy.

These depend on the image grids and token ids only, never on parameters, so they are computed with
the batch (by the input pipeline or the sampler) and passed to the jitted model as arrays:

- `rope_index`: the 3-D M-RoPE positions of the language model (transformers' `get_rope_index`),
  and the per-row delta that continues positions during decoding;
- `vision_layout`: for the vision tower, the window reordering, the 2-D rotary positions, and the
  segment ids that restrict attention to one image (full-attention blocks) or one window;
- `image_bins`: the image frames of a vision row packed into bins, so that the full-attention blocks attend
  within bins (`attention.image_attention`) rather than over the whole row.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from octomed_jax.models.config import ModelConfig, VisionConfig


def _vision_token_positions(start: int, grid_thw: np.ndarray, merge: int, time_interval: int) -> np.ndarray:
    t, h, w = int(grid_thw[0]), int(grid_thw[1]) // merge, int(grid_thw[2]) // merge
    tt, hh, ww = np.meshgrid(np.arange(t) * time_interval, np.arange(h), np.arange(w), indexing="ij")
    return np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + start


def rope_index(
    input_ids: np.ndarray,
    image_grid_thw: np.ndarray | None,
    attention_mask: np.ndarray | None,
    cfg: ModelConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """3-D positions for the language model, as transformers' `get_rope_index` computes them.

    Text tokens advance all three axes together; each image's run of `<|image_pad|>` tokens takes
    (t, h, w) grid coordinates offset by the position reached so far, and the text after it resumes
    at that offset plus the larger of the merged grid's height and width.

    Args:
      input_ids: int [batch, seq].
      image_grid_thw: int [num_images, 3] for the images of the batch, in order, or None.
      attention_mask: 1 for real tokens, 0 for padding, [batch, seq]; padding gets position 0.
      cfg: the model config (token ids, merge size).

    Returns:
      positions int32 [3, batch, seq] and deltas int32 [batch]: the position of the next token of
      row b is `seq_len_b + deltas[b]` (used to continue decoding after the prompt).
    """
    input_ids = np.asarray(input_ids)
    batch, seq = input_ids.shape
    mask = np.ones_like(input_ids, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    grids = iter(np.asarray(image_grid_thw).reshape(-1, 3) if image_grid_thw is not None else ())
    merge = cfg.vision.spatial_merge_size
    positions = np.zeros((3, batch, seq), np.int32)
    deltas = np.zeros((batch,), np.int32)
    for b in range(batch):
        ids = input_ids[b][mask[b]]
        is_image = ids == cfg.image_token_id
        pieces, pos, i = [], 0, 0
        while i < len(ids):
            j = i
            while j < len(ids) and is_image[j] == is_image[i]:
                j += 1
            if is_image[i]:
                try:
                    grid = next(grids)
                except StopIteration:
                    raise ValueError(f"row {b} has more image-token runs than image_grid_thw rows") from None
                vis = _vision_token_positions(pos, grid, merge, time_interval=1)
                if vis.shape[1] != j - i:
                    raise ValueError(
                        f"row {b}: an image run of {j - i} <|image_pad|> tokens does not match grid "
                        f"{grid.tolist()} ({vis.shape[1]} merged patches)"
                    )
                pieces.append(vis)
                pos += max(int(grid[1]), int(grid[2])) // merge
            else:
                pieces.append(np.broadcast_to(np.arange(pos, pos + j - i), (3, j - i)))
                pos += j - i
            i = j
        if pieces:
            row = np.concatenate(pieces, axis=1)
            positions[:, b, mask[b]] = row
            deltas[b] = row.max() + 1 - len(ids)
    return positions, deltas


@dataclasses.dataclass(frozen=True)
class VisionLayout:
    """Index arrays the vision tower needs for one set of images, padded to a fixed patch count.

    Attributes:
      window_index: int32 [units]: merge-unit order in which the blocks see the patches (windows
        contiguous); padding units map to themselves, at the end.
      rotary_positions: int32 [patches, 2]: (h, w) of each patch, in the original order.
      image_segment_ids: int32 [patches]: in window order, one id per image frame (full-attention
        blocks); 0 on padding.
      window_segment_ids: int32 [patches]: in window order, one id per window; 0 on padding.
      num_patches: real patches (the rest is padding).
    """

    window_index: np.ndarray
    rotary_positions: np.ndarray
    image_segment_ids: np.ndarray
    window_segment_ids: np.ndarray
    num_patches: int


def vision_layout(grid_thw: np.ndarray, vcfg: VisionConfig, pad_to: int | None = None) -> VisionLayout:
    """Window reordering, rotary positions and attention segments of the vision tower.

    Mirrors transformers' `get_vision_window_index`, `get_vision_position_ids` and the cu_seqlens of
    the full-attention blocks, expressed as segment ids so that one masked attention serves both.
    """
    grid_thw = np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3)
    merge, unit = vcfg.spatial_merge_size, vcfg.merge_unit
    win = vcfg.window_size // merge // vcfg.patch_size  # window side, in merged units
    window_index, rot, img_seg, win_seg = [], [], [], []
    unit_offset, next_window, next_frame = 0, 1, 1
    for t, h, w in grid_thw.tolist():
        if h % merge or w % merge:
            raise ValueError(f"image grid {(t, h, w)} is not divisible by spatial_merge_size {merge}")
        lh, lw = h // merge, w // merge
        # Rotary (h, w) per patch, laid out block-major over merge x merge blocks.
        hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        blocks = (lh, merge, lw, merge)
        hw = np.stack([hh.reshape(blocks).transpose(0, 2, 1, 3).ravel(),
                       ww.reshape(blocks).transpose(0, 2, 1, 3).ravel()], axis=-1)
        rot.append(np.tile(hw, (t, 1)))
        # Windows of win x win merged units, scanned row-major over the padded grid.
        index = np.arange(t * lh * lw).reshape(t, lh, lw)
        ph, pw = -lh % win, -lw % win  # windows that would be empty are skipped anyway
        padded = np.full((t, lh + ph, lw + pw), -1)
        padded[:, :lh, :lw] = index
        nh, nw = (lh + ph) // win, (lw + pw) // win
        padded = padded.reshape(t, nh, win, nw, win).transpose(0, 1, 3, 2, 4).reshape(t, nh * nw, win * win)
        for frame in range(t):
            for window in padded[frame]:
                units = window[window >= 0]
                if len(units):
                    window_index.append(units + unit_offset)
                    win_seg.append(np.full(len(units) * unit, next_window))
                    next_window += 1
            img_seg.append(np.full(lh * lw * unit, next_frame))
            next_frame += 1
        unit_offset += t * lh * lw
    num_patches = unit_offset * unit
    pad_to = num_patches if pad_to is None else pad_to
    if pad_to < num_patches or pad_to % unit:
        raise ValueError(f"pad_to={pad_to} must be a multiple of {unit} and >= {num_patches} patches")
    pad_units = (pad_to - num_patches) // unit
    cat = lambda xs, dtype: np.concatenate(xs).astype(dtype) if xs else np.zeros((0,), dtype)  # noqa: E731
    window_index = np.concatenate([cat(window_index, np.int32), np.arange(unit_offset, unit_offset + pad_units)])
    rotary = np.concatenate(rot) if rot else np.zeros((0, 2), np.int64)
    rotary = np.pad(rotary, ((0, pad_to - num_patches), (0, 0))).astype(np.int32)
    pad = lambda x: np.pad(x, (0, pad_to - num_patches)).astype(np.int32)  # noqa: E731
    return VisionLayout(
        window_index=window_index.astype(np.int32),
        rotary_positions=rotary,
        image_segment_ids=pad(cat(img_seg, np.int32)),
        window_segment_ids=pad(cat(win_seg, np.int32)),
        num_patches=num_patches,
    )


@dataclasses.dataclass(frozen=True)
class InterpolatedLayout:
    """Index arrays of the Qwen3-VL vision tower for one set of images, padded to a fixed patch count.

    The patches stay in the processor's block-major order (no windows), so every array is in that order.

    Attributes:
      rotary_positions: int32 [patches, 2]: (h, w) of each patch.
      image_segment_ids: int32 [patches]: one id per image frame (attention stays within it); 0 on padding.
      pos_index: int32 [patches, 4]: the four rows of the learned `side x side` position table that
        bilinear interpolation (align_corners=True) to the image's grid reads for each patch.
      pos_weight: float32 [patches, 4]: their weights (0 on padding).
      num_patches: real patches (the rest is padding).
    """

    rotary_positions: np.ndarray
    image_segment_ids: np.ndarray
    pos_index: np.ndarray
    pos_weight: np.ndarray
    num_patches: int


def _interpolation_taps(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear taps [n, 2] into a `side`-long axis, and their weights, for positions `index` of a `size`-long one.

    align_corners=True: the end points map to 0 and side - 1; float32 as transformers computes them.
    """
    src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
    floor = np.floor(src)
    offsets = np.arange(2)
    taps = np.clip(floor.astype(np.int64)[:, None] + offsets, 0, side - 1)
    weights = np.maximum(np.float32(1) - np.abs(src[:, None] - floor[:, None] - offsets), 0).astype(np.float32)
    return taps, weights


def interpolated_layout(grid_thw: np.ndarray, vcfg: VisionConfig, pad_to: int | None = None) -> InterpolatedLayout:
    """Rotary positions, attention segments and position-table interpolation of Qwen3-VL's vision tower.

    Mirrors transformers' `get_vision_position_ids`, the per-frame `cu_seqlens` and
    `get_vision_interpolation_indices_and_weights(mode="bilinear", align_corners=True)`.
    """
    grid_thw = np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3)
    merge = vcfg.spatial_merge_size
    side = int(round(vcfg.num_position_embeddings**0.5))
    rot, seg, index, weight = [], [], [], []
    for frame_base, (t, h, w) in zip(np.cumsum([0, *grid_thw[:, 0]]), grid_thw.tolist(), strict=False):
        if h % merge or w % merge:
            raise ValueError(f"image grid {(t, h, w)} is not divisible by spatial_merge_size {merge}")
        # Each frame's (row, col) of its patches, block-major over merge x merge blocks.
        hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        blocks = (h // merge, merge, w // merge, merge)
        row = hh.reshape(blocks).transpose(0, 2, 1, 3).ravel()
        col = ww.reshape(blocks).transpose(0, 2, 1, 3).ravel()
        h_taps, h_weights = _interpolation_taps(row, h, side)
        w_taps, w_weights = _interpolation_taps(col, w, side)
        frame_index = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(-1, 4)
        frame_weight = (h_weights[:, :, None] * w_weights[:, None, :]).reshape(-1, 4)
        rot.append(np.tile(np.stack([row, col], axis=-1), (t, 1)))
        index.append(np.tile(frame_index, (t, 1)))
        weight.append(np.tile(frame_weight, (t, 1)))
        seg.append(np.repeat(np.arange(frame_base + 1, frame_base + t + 1), h * w))
    num_patches = int(np.prod(grid_thw, axis=-1).sum())
    pad_to = num_patches if pad_to is None else pad_to
    if pad_to < num_patches or pad_to % vcfg.merge_unit:
        raise ValueError(f"pad_to={pad_to} must be a multiple of {vcfg.merge_unit} and >= {num_patches} patches")

    def padded(parts: list[np.ndarray], shape: tuple[int, ...], dtype: type) -> np.ndarray:
        array = np.concatenate(parts) if parts else np.zeros((0, *shape), dtype)
        return np.pad(array, ((0, pad_to - num_patches),) + ((0, 0),) * len(shape)).astype(dtype)

    return InterpolatedLayout(
        rotary_positions=padded(rot, (2,), np.int32),
        image_segment_ids=padded(seg, (), np.int32),
        pos_index=padded(index, (4,), np.int32),
        pos_weight=padded(weight, (4,), np.float32),
        num_patches=num_patches,
    )


def prompt_positions(
    input_ids: np.ndarray, image_grid_thw: np.ndarray | None, attention_mask: np.ndarray | None, cfg: ModelConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The family's language positions and decode deltas (`rope_index`'s contract): M-RoPE (`rope_index`), or
    InternVL's 1-D positions (`internvl.positions_1d`), for an example and for the sampler's prompts."""
    if cfg.traits.positions == "1d":
        from octomed_jax.models.internvl import positions_1d  # lazy: internvl builds on this module's users

        ids = np.asarray(input_ids)
        return positions_1d(np.ones(ids.shape, bool) if attention_mask is None else attention_mask)
    return rope_index(input_ids, image_grid_thw, attention_mask, cfg)


BIN_ALIGN = 128  # bin lengths are multiples of the flash kernels' tile


def max_image_patches(max_pixels: int, vcfg: VisionConfig) -> int:
    """The most patches one image frame has after a smart resize to at most `max_pixels` (whole merge units)."""
    return max_pixels // vcfg.patch_size**2 // vcfg.merge_unit * vcfg.merge_unit


def image_bin_shape(pad_to: int, image_patches: int) -> tuple[int, int] | None:
    """(bins, bin_len) of a vision row of `pad_to` patches whose frames hold at most `image_patches` each.

    Frames are packed into bins in order (`image_bins`), so two neighbouring bins hold more than `bin_len`
    patches: `2 * ceil(pad_to / bin_len) - 1` bins take any row. None when that is no cheaper than attending
    over the row (`bins * bin_len**2 >= pad_to**2`), or without a bound (`image_patches` 0).
    """
    if image_patches <= 0:
        return None
    bin_len = -(-image_patches // BIN_ALIGN) * BIN_ALIGN
    bins = 2 * -(-pad_to // bin_len) - 1
    return (bins, bin_len) if bins * bin_len**2 < pad_to**2 else None


def image_bins(segment_ids: np.ndarray, bins: int, bin_len: int) -> np.ndarray:
    """The slots of a vision row's frames packed into bins: int32 [bins, bin_len], -1 where a bin is empty.

    Args:
      segment_ids: [patches] one id per frame, each frame contiguous (the tower's order), 0 on padding.
      bins, bin_len: the static shape (`image_bin_shape`).

    Each frame goes whole into the current bin, or starts the next when it does not fit; a frame's patches
    keep their order. Raises ValueError for a frame longer than `bin_len` (an image larger than the data's
    `max_pixels` allows).
    """
    out = np.full((bins, bin_len), -1, np.int32)
    starts = np.flatnonzero(np.diff(segment_ids, prepend=0) != 0)
    ends = np.append(starts[1:], len(segment_ids))[:len(starts)]  # none for a row of padding
    b, fill = 0, 0
    for start, end in zip(starts, ends, strict=True):
        if segment_ids[start] == 0:
            continue
        n = int(end - start)
        if n > bin_len:
            raise ValueError(f"an image frame of {n} patches does not fit the vision bins of {bin_len} "
                             "(data.max_pixels allows fewer): check the data's image preprocessing")
        if fill + n > bin_len:
            b, fill = b + 1, 0
        out[b, fill:fill + n] = np.arange(start, end)
        fill += n
    return out


def row_layout(grid_thw: np.ndarray, vcfg: VisionConfig, pad_to: int, image_patches: int = 0) -> dict[str, np.ndarray]:
    """One vision row's index arrays by `VisionInputs` field name, for the tower `vcfg` describes (read-only).

    A tower with a learned position table (Qwen3-VL) takes `interpolated_layout`, a windowed one (Qwen2.5-VL)
    `vision_layout`; the packed data path and the abstract batches read the family's fields from here.
    InternVL's tiles (`vcfg.image_size`) need none: its `VisionInputs` is the pixels alone (a packed row's
    `pixel_values` then hold whole tiles: data.max_patches a multiple of `vcfg.num_tile_patches`).
    With `image_patches` (the most patches of one frame, `max_image_patches`), also `image_bins`, when
    `image_bin_shape` finds them cheaper than attending over the row.
    Rows of the same image sizes share one layout (cached): packing computed it for every row (~4 ms each).
    """
    grids = tuple(tuple(g) for g in np.asarray(grid_thw, np.int64).reshape(-1, 3).tolist())
    return _row_layout(grids, vcfg, pad_to, image_patches)


@functools.lru_cache(maxsize=1024)
def _row_layout(grids: tuple[tuple[int, int, int], ...], vcfg: VisionConfig, pad_to: int,
                image_patches: int) -> dict[str, np.ndarray]:
    if vcfg.image_size:
        return {}
    make = interpolated_layout if vcfg.num_position_embeddings else vision_layout
    layout = make(np.asarray(grids, np.int64).reshape(-1, 3), vcfg, pad_to=pad_to)
    out = {f.name: getattr(layout, f.name) for f in dataclasses.fields(layout) if f.name != "num_patches"}
    shape = image_bin_shape(pad_to, image_patches)
    if shape is not None:
        out["image_bins"] = image_bins(layout.image_segment_ids, *shape)
    for value in out.values():
        value.flags.writeable = False  # shared by every row of these sizes
    return out
