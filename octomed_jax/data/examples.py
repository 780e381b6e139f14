"""One accepted-trace record (msgpack bytes) -> one tokenised training example.

`ExampleDecoder` is the per-record map of the input pipeline; it runs in Grain worker processes. It never
raises on bad data: a record that cannot be used comes back as a `Skipped` naming its source, record index
and reason, so that the packer (in the main process) counts it against the error budget, and so that the
stream stays one element per record (which keeps the rows independent of the number of workers).

The example is the chat template's token ids (`template.encode_chat`) with targets shifted left by one:
position t is trained to predict token t+1 wherever token t+1 belongs to the assistant's answer (its
closing `<|im_end|>` included). Positions are the example's own 3-D M-RoPE positions (`rope_index` on the
example alone), so a packed row holds each example exactly as if it were alone.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from octomed_jax.data import template
from octomed_jax.data import tokenizer as tok
from octomed_jax.data.config import DataConfig
from octomed_jax.data.images import ImageError, family_options, num_image_tokens, preprocess_image

if TYPE_CHECKING:
    from octomed_jax.models.config import ModelConfig

# Filler for positions without a target (the last token of an example) and for padding, with Qwen's
# tokenizer; another tokenizer's is its own `<|endoftext|>` (`special_ids_for(path).pad`).
PAD_ID = tok.ENDOFTEXT_ID

# Reasons a record is not trained on. Errors count against the error budget; drops are the config's
# choice (too long for a row) and are only counted.
ERROR_REASONS = (
    "corrupt_record",
    "schema_version",
    "corrupt_image",
    "missing_image",
    "image_too_large",
    "bad_aspect_ratio",
    "template_error",
)
DROP_REASONS = ("overlong", "too_many_patches")


@dataclasses.dataclass(frozen=True)
class Example:
    """One tokenised training example.

    Attributes:
      source: the source it was read from.
      index: its record index within that source's shards (before shuffling).
      input_ids: int32 [L].
      targets: int32 [L]; targets[t] = input_ids[t + 1], the padding id at the last position.
      loss_mask: bool [L]; True where targets[t] is an assistant token.
      positions: int32 [3, L], M-RoPE (t, h, w) positions of the example alone.
      pixel_values: float32 [patches, 1176], the example's images in order (patches = 0 for text).
      image_grid_thw: int64 [num_images, 3].
      truncated: reasoning tokens cut to fit `seq_len` (0 when not truncated).
    """

    source: str
    index: int
    input_ids: np.ndarray
    targets: np.ndarray
    loss_mask: np.ndarray
    positions: np.ndarray
    pixel_values: np.ndarray
    image_grid_thw: np.ndarray
    truncated: int = 0

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_patches(self) -> int:
        return int(self.pixel_values.shape[0])


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A record that was not turned into an example.

    Attributes:
      source: the source it was read from.
      index: its record index within that source's shards.
      reason: one of `ERROR_REASONS` (counted against the error budget) or `DROP_REASONS`.
      message: what went wrong, for the log.
    """

    source: str
    index: int
    reason: str
    message: str

    @property
    def is_error(self) -> bool:
        return self.reason in ERROR_REASONS


class _Skip(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# One tokenizer per process, path and family: loading it takes ~0.3 s and workers decode thousands of records.
_TOKENIZERS: dict[tuple[str | None, tuple[tuple[str, str], ...] | None], tuple[Any, tok.SpecialIds]] = {}
_TOKENIZER_LOCK = threading.Lock()


def _tokenizer_and_ids(path: str | None, family: str = "qwen2_5_vl") -> tuple[Any, tok.SpecialIds]:
    from octomed_jax.models.config import family_traits  # lazy: keeps `import octomed_jax.data` light

    image_tokens = family_traits(family).image_tokens  # the family's own image tokens, added when missing
    with _TOKENIZER_LOCK:
        if (path, image_tokens) not in _TOKENIZERS:
            # The run contract read the same folder's ids when the run started (`RunContract.from_config`).
            tokenizer = tok.load_tokenizer(path, special_ids=None, image_tokens=image_tokens and dict(image_tokens))
            _TOKENIZERS[path, image_tokens] = (tokenizer, tok.SpecialIds.from_tokenizer(tokenizer))
        return _TOKENIZERS[path, image_tokens]


def _tokenizer(path: str | None, family: str = "qwen2_5_vl") -> Any:
    return _tokenizer_and_ids(path, family)[0]


def special_ids_for(tokenizer_path: str | None, family: str = "qwen2_5_vl") -> tok.SpecialIds:
    """The special ids of the data's tokenizer (`DataConfig.tokenizer_path`; None: Qwen's files) for `family`."""
    return _tokenizer_and_ids(tokenizer_path, family)[1]


def truncate_reasoning(
    token_ids: np.ndarray, loss_mask: np.ndarray, max_len: int, special_ids: tok.SpecialIds = tok.QWEN_SPECIAL_IDS
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Cuts the end of the reasoning inside `<think>...</think>` so the example has `max_len` tokens.

    Everything outside the reasoning (the prompt, `</think>`, the answer line, `<|im_end|>`) is kept.

    Args:
      token_ids: int [L] of the chat (unshifted).
      loss_mask: bool [L] of the chat (unshifted).
      max_len: the length to reach.
      special_ids: the tokenizer's ids (its `<think>` pair).

    Returns:
      (token_ids, loss_mask, tokens_cut), or None when the example has no single-token `<think>` /
      `</think>` pair in the answer or when cutting all of the reasoning would not be enough.
    """
    excess = len(token_ids) - max_len
    if excess <= 0:
        return token_ids, loss_mask, 0
    if special_ids.think_start is None or special_ids.think_end is None:
        return None
    starts = np.flatnonzero((token_ids == special_ids.think_start) & loss_mask)
    if not len(starts):
        return None
    start = int(starts[0])
    ends = np.flatnonzero(token_ids[start:] == special_ids.think_end)
    if not len(ends):
        return None
    end = start + int(ends[0])
    reasoning = end - start - 1
    if reasoning < excess:
        return None
    keep = np.r_[0 : start + 1 + reasoning - excess, end : len(token_ids)]
    return token_ids[keep], loss_mask[keep], excess


class ExampleDecoder:
    """The per-record map: `(record index, AcceptedTrace bytes) -> Example | Skipped`.

    Picklable (Grain sends it to worker processes); the tokenizer is loaded once per process on first use.
    """

    def __init__(self, source: str, cfg: DataConfig, model_cfg: ModelConfig):
        """Creates the decoder of one source.

        Args:
          source: the source name the records come from (reported with skipped records).
          cfg: the data config (pixels, `seq_len`, `max_patches`, overlong policy, prompts, tokenizer).
          model_cfg: the student's config (image token id and merge size for the positions).
        """
        self.source = source
        self.cfg = cfg
        self.model_cfg = model_cfg

    def __call__(self, index: int, record: bytes) -> Example | Skipped:
        try:
            return self.decode(index, record)
        except _Skip as e:
            return Skipped(self.source, int(index), e.reason, str(e))

    def _images(self, trace: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
        patches, grids = [], []
        for k, ref in enumerate(trace.question.images):
            data = ref.data
            if data is None:
                if ref.path is None or self.cfg.image_root is None:
                    raise _Skip("missing_image", f"image {k} has no bytes (path {ref.path!r}, no image_root)")
                try:
                    with open(os.path.join(self.cfg.image_root, ref.path), "rb") as f:
                        data = f.read()
                except OSError as e:
                    raise _Skip("missing_image", f"image {k}: {e}") from e
            try:
                p, g = preprocess_image(data, min_pixels=self.cfg.min_pixels, max_pixels=self.cfg.max_pixels,
                                        **family_options(self.model_cfg))  # the family's patches and norm
            except ImageError as e:
                raise _Skip(e.reason, f"image {k}: {e}") from e
            except Exception as e:  # PIL raises unrelated types on odd files; one image must not stop a run
                raise _Skip("corrupt_image", f"image {k}: {type(e).__name__}: {e}") from e
            patches.append(p)
            grids.append(g)
        return patches, grids

    def decode(self, index: int, record: bytes) -> Example:
        """Like `__call__` but raises `_Skip` instead of returning `Skipped`."""
        from data_pipeline.records import AcceptedTrace, BadRecordError

        cfg = self.cfg
        try:
            trace = AcceptedTrace.from_bytes(bytes(record))
        except BadRecordError as e:
            raise _Skip(e.reason, str(e)) from e
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # msgpack decoded, but not a trace
            raise _Skip("corrupt_record", f"not an AcceptedTrace: {type(e).__name__}: {e}") from e

        merge = self.model_cfg.vision.spatial_merge_size
        patches, grids = self._images(trace)
        n_patches = sum(int(np.prod(g)) for g in grids)
        if n_patches > cfg.max_patches:
            raise _Skip("too_many_patches", f"{n_patches} image patches > max_patches {cfg.max_patches}")

        try:
            messages = template.messages_for_trace(trace, system_prompt=cfg.system_prompt, instruction=cfg.instruction)
            tokenizer, ids = _tokenizer_and_ids(cfg.tokenizer_path, self.model_cfg.family)
            chat = template.encode_chat(tokenizer, messages, image_grids=grids, merge_size=merge,
                                        template=self.model_cfg.traits.chat_template)
        except template.TemplateError as e:
            raise _Skip("template_error", str(e)) from e

        token_ids, mask, cut = chat.token_ids, chat.loss_mask, 0
        if len(token_ids) > cfg.seq_len:
            truncated = (truncate_reasoning(token_ids, mask, cfg.seq_len, ids)
                         if cfg.overlong == "truncate_reasoning" else None)
            if truncated is None:
                raise _Skip("overlong", f"{len(token_ids)} tokens > seq_len {cfg.seq_len}")
            token_ids, mask, cut = truncated
        return make_example(self.source, index, token_ids, mask, patches, grids, self.model_cfg, truncated=cut,
                            pad_id=ids.pad)


def make_example(
    source: str,
    index: int,
    token_ids: np.ndarray,
    loss_mask: np.ndarray,
    pixel_values: list[np.ndarray],
    image_grid_thw: list[np.ndarray],
    model_cfg: ModelConfig,
    *,
    truncated: int = 0,
    pad_id: int = PAD_ID,
) -> Example:
    """An `Example` from a tokenised chat: targets and mask shifted by one, the family's positions (`rope_index`;
    InternVL: 1-D).

    Args:
      source: source name.
      index: record index within the source.
      token_ids: int [L], the chat's tokens (`EncodedChat.token_ids`).
      loss_mask: bool [L], True on assistant tokens (`EncodedChat.loss_mask`), unshifted.
      pixel_values: per image, float32 [patches_i, patch_dim].
      image_grid_thw: per image, int [3].
      model_cfg: the student's config.
      truncated: reasoning tokens already cut.
      pad_id: the tokenizer's padding id, the target of the last position.

    Returns:
      The example.
    """
    from octomed_jax.models.positions import prompt_positions  # lazy: keeps `import octomed_jax.data` light

    ids = np.asarray(token_ids, np.int32)
    grids = np.asarray(image_grid_thw, np.int64).reshape(-1, 3)
    merge = model_cfg.vision.spatial_merge_size
    n_features = sum(num_image_tokens(g, merge) for g in grids)
    if int((ids == model_cfg.image_token_id).sum()) != n_features:
        raise ValueError(f"{source}[{index}]: image tokens do not match the grids {grids.tolist()}")
    targets = np.empty_like(ids)
    targets[:-1] = ids[1:]
    targets[-1:] = pad_id
    shifted = np.zeros(len(ids), np.bool_)
    shifted[:-1] = np.asarray(loss_mask, np.bool_)[1:]
    positions, _ = prompt_positions(ids[None], grids if len(grids) else None, None, model_cfg)
    pixels = (
        np.concatenate(pixel_values).astype(np.float32, copy=False)
        if pixel_values
        else np.zeros((0, model_cfg.vision.patch_dim), np.float32)
    )
    return Example(
        source=source,
        index=int(index),
        input_ids=ids,
        targets=targets,
        loss_mask=shifted,
        positions=positions[:, 0],
        pixel_values=pixels,
        image_grid_thw=grids,
        truncated=int(truncated),
    )
