"""Prompts for the sampler: messages and images through THE chat template (`data.template.encode_chat`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from octomed_jax.data.images import MERGE_SIZE, MIN_PIXELS, OCTOMED_MAX_PIXELS, ImageInput, preprocess_image
from octomed_jax.data.template import encode_chat, messages_for_question
from octomed_jax.generation.sampler import Prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from data_pipeline.records import Question


def encode_prompt(
    tokenizer: PreTrainedTokenizerFast,
    messages: Sequence[Mapping[str, Any]],
    images: Sequence[ImageInput] = (),
    *,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = OCTOMED_MAX_PIXELS,
    template: str | None = None,
    **family: Any,
) -> Prompt:
    """A generation prompt: the template with `<|im_start|>assistant\\n` appended, images preprocessed.

    Args:
      tokenizer: the Qwen tokenizer.
      messages: chat messages; each image item (`{"type": "image"}`) takes the next of `images`.
      images: the images in order (PIL images, encoded bytes or arrays).
      min_pixels: smallest resized image area.
      max_pixels: largest resized image area (OctoMed: 512 x 512).
      template: the chat template's name (the run contract's `prompting.template`); None: the tokenizer's
        (`encode_chat`).
      **family: the model family's image parameters (`data.images.family_options`; none: Qwen2.5-VL's).

    Raises:
      TemplateError: bad roles or content, or an image count that differs from the image items.
      ImageError: an image that cannot be decoded.
    """
    processed = [preprocess_image(im, min_pixels=min_pixels, max_pixels=max_pixels, **family) for im in images]
    grids = [g for _, g in processed]
    encoded = encode_chat(tokenizer, messages, image_grids=grids, add_generation_prompt=True,
                          merge_size=family.get("merge_size", MERGE_SIZE), template=template)
    if not processed:
        return Prompt(encoded.token_ids)
    return Prompt(encoded.token_ids, np.concatenate([p for p, _ in processed]), encoded.image_grid_thw)


def question_prompt(
    tokenizer: PreTrainedTokenizerFast,
    question: Question,
    *,
    system_prompt: str | None = None,
    instruction: str | None = None,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = OCTOMED_MAX_PIXELS,
    template: str | None = None,
    **family: Any,
) -> Prompt:
    """The prompt of a multiple-choice question, exactly as training shows it (`messages_for_question`);
    `template` and `family` as in `encode_prompt`."""
    images = []
    for ref in question.images:
        if ref.data is None:
            raise ValueError(
                f"{question.label}: image {ref.path!r} was not loaded (read the source with load_bytes=True)"
            )
        images.append(ref.data)
    messages = messages_for_question(question, system_prompt, instruction=instruction)
    return encode_prompt(tokenizer, messages, images, min_pixels=min_pixels, max_pixels=max_pixels, template=template,
                         **family)


__all__ = ["encode_prompt", "question_prompt"]
