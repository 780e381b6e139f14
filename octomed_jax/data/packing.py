"""Packing examples into fixed-shape rows under a token budget and an image-patch budget.

`RowPacker` is a streaming bin packer with a bounded set of open rows: each example goes into the open
row that fits it best (best-fit: least room left afterwards) or first (first-fit: oldest open row); when
no open row fits and all `max_open_rows` are in use, the fullest open row is closed and emitted. Memory is
bounded by the open rows, and the decisions depend only on the stream of (length, patches), so the
packer is deterministic and can be rebuilt from the list of examples in its open rows (see `pipeline`).
Grain's own packers know no patch budget, hence this one.

`pack_rows` turns rows of `Example`s into the arrays of one batch, every row padded to the same shapes
so the train step compiles once: tokens, shifted targets and loss mask, segment ids (1..k per example,
0 padding), each example's own M-RoPE positions, and the row's images (in the order their tokens appear)
with their vision-tower layout (`positions.row_layout`: the family's fields).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from octomed_jax.data.examples import PAD_ID, Example

if TYPE_CHECKING:
    from octomed_jax.models.config import VisionConfig

T = TypeVar("T")

# Keys of a packed batch (numpy, leading batch axis) and their per-row shapes.
TEXT_KEYS = ("input_ids", "targets", "loss_mask", "segment_ids", "positions")
# Vision keys (with images): "pixel_values" and the family's layout fields (`positions.row_layout`).


@dataclasses.dataclass
class _Row(Generic[T]):
    items: list[T]
    tokens: int = 0
    patches: int = 0


class RowPacker(Generic[T]):
    """Streaming first-fit / best-fit packing under a token and a patch budget.

    Usage:
        packer = RowPacker(seq_len=8192, max_patches=8192)
        for ex in examples:
            for row in packer.add(ex, len(ex), ex.num_patches): emit(row)
        for row in packer.flush(): emit(row)
    """

    def __init__(self, seq_len: int, max_patches: int, algorithm: str = "best_fit", max_open_rows: int = 16):
        """Creates the packer.

        Args:
          seq_len: token budget of a row.
          max_patches: patch budget of a row.
          algorithm: "best_fit" or "first_fit".
          max_open_rows: rows kept open at once.
        """
        if algorithm not in ("best_fit", "first_fit"):
            raise ValueError(f"packing algorithm {algorithm!r}; expected 'best_fit' or 'first_fit'")
        self.seq_len = seq_len
        self.max_patches = max_patches
        self.algorithm = algorithm
        self.max_open_rows = max_open_rows
        self._open: list[_Row[T]] = []

    @property
    def open_rows(self) -> list[list[T]]:
        """The items of each open row, oldest row first, items in order."""
        return [list(r.items) for r in self._open]

    def add(self, item: T, tokens: int, patches: int) -> list[list[T]]:
        """Places one item; returns the rows closed to make room (at most one).

        Raises:
          ValueError: when the item alone exceeds a budget (the decoder drops or truncates those first).
        """
        if tokens > self.seq_len or patches > self.max_patches or tokens < 1:
            raise ValueError(
                f"an item of {tokens} tokens / {patches} patches does not fit a row "
                f"of {self.seq_len} / {self.max_patches}"
            )
        fits = [
            i
            for i, r in enumerate(self._open)
            if r.tokens + tokens <= self.seq_len and r.patches + patches <= self.max_patches
        ]
        closed: list[list[T]] = []
        if fits:
            if self.algorithm == "best_fit":  # least room left; ties: the older row
                best = min(fits, key=lambda i: (self.seq_len - self._open[i].tokens - tokens, i))
            else:
                best = fits[0]
            row = self._open[best]
        else:
            if len(self._open) >= self.max_open_rows:
                # The fullest row has the least chance to take another example.
                fullest = max(range(len(self._open)), key=lambda i: (self._open[i].tokens, -i))
                closed.append(self._open.pop(fullest).items)
            row = _Row([])
            self._open.append(row)
        row.items.append(item)
        row.tokens += tokens
        row.patches += patches
        if row.tokens == self.seq_len:  # exactly full: nothing else can join it
            self._open.remove(row)
            closed.append(row.items)
        return closed

    def reopen(self, items: list[T], tokens: int, patches: int) -> None:
        """Appends an open row as it was (restoring a saved packer: call in the saved `open_rows` order)."""
        if len(self._open) >= self.max_open_rows or tokens > self.seq_len or patches > self.max_patches:
            raise ValueError("the restored open rows do not fit this packer's budgets")
        self._open.append(_Row(list(items), tokens, patches))

    def flush(self) -> list[list[T]]:
        """Closes every open row (end of data), oldest first."""
        rows = [r.items for r in self._open]
        self._open = []
        return rows


@dataclasses.dataclass
class PackingStats:
    """Counters of the rows emitted so far.

    Attributes:
      rows: packed rows emitted.
      examples: examples in them.
      tokens: real (non-padding) tokens in them.
      loss_tokens: tokens with a loss.
      patches: real image patches in them.
      truncated_examples: examples whose reasoning was cut to fit.
      seq_len: the token budget of a row.
      max_patches: the patch budget of a row.
    """

    rows: int = 0
    examples: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    patches: int = 0
    truncated_examples: int = 0
    seq_len: int = 0
    max_patches: int = 0

    @property
    def efficiency(self) -> float:
        """Real tokens / token budget of the rows emitted."""
        return self.tokens / (self.rows * self.seq_len) if self.rows else 0.0

    @property
    def patch_fill(self) -> float:
        """Real patches / patch budget of the rows emitted."""
        return self.patches / (self.rows * self.max_patches) if self.rows and self.max_patches else 0.0

    def add_row(self, row: Sequence[Example]) -> None:
        """Counts one emitted row."""
        self.rows += 1
        self.examples += len(row)
        self.tokens += sum(len(e) for e in row)
        self.loss_tokens += sum(int(e.loss_mask.sum()) for e in row)
        self.patches += sum(e.num_patches for e in row)
        self.truncated_examples += sum(e.truncated > 0 for e in row)

    def to_dict(self) -> dict[str, Any]:
        """The counters (ints, JSON-able) plus the derived `efficiency` and `patch_fill`."""
        d = dataclasses.asdict(self)
        d["efficiency"] = round(self.efficiency, 6)
        d["patch_fill"] = round(self.patch_fill, 6)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PackingStats:
        """Inverse of `to_dict` (derived fields ignored)."""
        return cls(**{f.name: int(d[f.name]) for f in dataclasses.fields(cls) if f.name in d})


def empty_batch(
    batch_size: int, seq_len: int, max_patches: int, vcfg: VisionConfig, *, pad_id: int = PAD_ID,
    image_patches: int = 0,
) -> dict[str, np.ndarray]:
    """An all-padding batch of the packed shapes (vision keys, those of `vcfg`'s family, when `max_patches` > 0).

    `pad_id` is the tokenizer's `<|endoftext|>` (`examples.special_ids_for`): padding must be a valid row of the
    embedding, whatever the vocabulary's size. `image_patches`: as in `pack_rows`.
    """
    from octomed_jax.models.positions import row_layout  # lazy: keeps `import octomed_jax.data` light

    b = batch_size
    out = {
        "input_ids": np.full((b, seq_len), pad_id, np.int32),
        "targets": np.full((b, seq_len), pad_id, np.int32),
        "loss_mask": np.zeros((b, seq_len), np.float32),
        "segment_ids": np.zeros((b, seq_len), np.int32),
        "positions": np.zeros((b, 3, seq_len), np.int32),
    }
    if max_patches:
        out["pixel_values"] = np.zeros((b, max_patches, vcfg.patch_dim), np.float32)
        for key, value in row_layout(np.zeros((0, 3)), vcfg, max_patches, image_patches).items():  # padding
            out[key] = np.broadcast_to(value, (b, *value.shape)).copy()
    return out


def pack_rows(
    rows: Sequence[Sequence[Example]], seq_len: int, max_patches: int, vcfg: VisionConfig, *, pad_id: int = PAD_ID,
    image_patches: int = 0,
) -> dict[str, np.ndarray]:
    """The arrays of a batch of packed rows, each row padded to `seq_len` tokens and `max_patches` patches.

    Args:
      rows: per row, its examples in order (as the packer emitted them).
      seq_len: token budget.
      max_patches: patch budget (0: text only, no vision keys).
      vcfg: the vision tower's config (its family's layout: `positions.row_layout`).
      pad_id: the padding token (the tokenizer's `<|endoftext|>`).
      image_patches: the most patches one image frame can have (`positions.max_image_patches` of the data's
        `max_pixels`; 0: unknown): the rows then carry `image_bins` where they save work.

    Returns:
      numpy arrays with a leading batch axis of len(rows):
        input_ids int32 [B, L] (padding `pad_id`), targets int32 [B, L], loss_mask float32 [B, L],
        segment_ids int32 [B, L] (1..k, 0 padding), positions int32 [B, 3, L] (per example, 0 padding);
        with images: pixel_values float32 [B, P, patch_dim] and the layout fields (Qwen2.5-VL: window_index
        int32 [B, P/4], rotary_positions int32 [B, P, 2], image_segment_ids, window_segment_ids int32 [B, P];
        Qwen3-VL: rotary_positions, image_segment_ids, pos_index int32 [B, P, 4], pos_weight float32 [B, P, 4];
        both: image_bins int32 [B, bins, bin_len] with `image_patches`, see `positions.image_bin_shape`).

    Raises:
      ValueError: a row over a budget.
    """
    from octomed_jax.models.positions import row_layout  # lazy: keeps `import octomed_jax.data` light

    out = empty_batch(len(rows), seq_len, max_patches, vcfg, pad_id=pad_id, image_patches=image_patches)
    for b, row in enumerate(rows):
        n = sum(len(e) for e in row)
        p = sum(e.num_patches for e in row)
        if n > seq_len or p > max_patches:
            raise ValueError(f"row of {n} tokens / {p} patches exceeds {seq_len} / {max_patches}")
        start = 0
        for k, e in enumerate(row, start=1):
            end = start + len(e)
            out["input_ids"][b, start:end] = e.input_ids
            out["targets"][b, start:end] = e.targets
            out["loss_mask"][b, start:end] = e.loss_mask
            out["segment_ids"][b, start:end] = k
            out["positions"][b, :, start:end] = e.positions
            start = end
        if max_patches and p:
            # Features fill the row's image tokens in order: images listed in the order of the examples.
            grids = np.concatenate([e.image_grid_thw for e in row])
            np.concatenate([e.pixel_values for e in row if e.num_patches], out=out["pixel_values"][b, :p])
            for key, value in row_layout(grids, vcfg, max_patches, image_patches).items():
                out[key][b] = value
    return out
