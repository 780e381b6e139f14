"""THE chat template of the repository: training, evaluation and serving all prompt through it.

`CHAT_TEMPLATE` is Qwen2.5-VL-Instruct's own Jinja template, verbatim (the one in the Hub checkpoints'
`chat_template.json`): a default system prompt "You are a helpful assistant." when the conversation has
none, `<|im_start|>role\\n ... <|im_end|>\\n` turns, and each image as
`<|vision_start|><|image_pad|><|vision_end|>`. Keeping it verbatim means a fine-tuned checkpoint is
prompted by transformers and vLLM exactly as the base model was, and exactly as we train it.

`encode_chat` renders the same layout in Python and tokenises it piece by piece: special tokens become
ids directly, the text between two special tokens goes through the tokenizer as one string (as it does
inside `apply_chat_template`, whose tokenizer splits at special tokens first), and character offsets
tell which tokens belong to an assistant answer. Each image's single `<|image_pad|>` is expanded to one
pad per merged patch, `grid_t * grid_h * grid_w / merge_size**2`, as Qwen's processor does.
"""

from __future__ import annotations

import dataclasses
import os
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from data_pipeline.validity import CONTROL_TOKENS
from octomed_jax.data import tokenizer as tok_ids
from octomed_jax.data.images import MERGE_SIZE, num_image_tokens

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from data_pipeline.records import AcceptedTrace, Question

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Qwen2.5-VL-7B-Instruct's chat template, character for character. Do not edit: the tests compare it with
# the published one, and every checkpoint we export carries it.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_TEMPLATE_FILENAME = "chat_template.jinja"

# InternVL's (the internvl family's) chat template, as transformers' InternVL converter
# (`convert_internvl_weights_to_hf.py`) writes it into the "-HF" checkpoints: no default system turn, each image
# `<IMG_CONTEXT>\n` (`InternVLProcessor` expands it to `<img>` + 256 x tiles `<IMG_CONTEXT>` + `</img>`). A
# tokenizer with InternVL's image tokens (`tokenizer.tokenizer_image_tokens`) is encoded with this layout.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

ROLES = ("system", "user", "assistant")

Message = dict[str, Any]


class TemplateError(ValueError):
    """Messages that the template cannot encode faithfully (bad role or content, image count mismatch,
    control tokens inside text)."""


@dataclasses.dataclass(frozen=True)
class EncodedChat:
    """One tokenised conversation.

    Attributes:
      token_ids: int32 [L], image pads already expanded.
      loss_mask: bool [L]; True where the token is part of an assistant answer (its text and closing
        `<|im_end|>`), i.e. where the model is trained to predict that token from the ones before it.
        The `<|im_start|>assistant\\n` header and the `\\n` after `<|im_end|>` are False.
      image_grid_thw: int64 [num_images, 3], the grids of the images in the order their pads appear.
      image_token_id: the tokenizer's `<|image_pad|>` id.
    """

    token_ids: np.ndarray
    loss_mask: np.ndarray
    image_grid_thw: np.ndarray
    image_token_id: int = tok_ids.IMAGE_PAD_ID

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def num_images(self) -> int:
        return int(self.image_grid_thw.shape[0])

    @property
    def image_token_mask(self) -> np.ndarray:
        """bool [L], True at `<|image_pad|>` tokens (the model's `mm_token_type_ids`)."""
        return self.token_ids == self.image_token_id

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())


@dataclasses.dataclass(frozen=True)
class _Piece:
    text: str
    special: bool  # a control token, inserted by id
    assistant: bool  # inside an assistant answer (trained on)
    kind: str = "text"  # "text", "control", "image" or "video"


def _is_image_item(item: Mapping[str, Any]) -> bool:
    # The same tests as the Jinja template, in its order.
    return item.get("type") == "image" or "image" in item or "image_url" in item


def _is_video_item(item: Mapping[str, Any]) -> bool:
    return item.get("type") == "video" or "video" in item


def _pieces(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool, internvl: bool = False
            ) -> list[_Piece]:
    """The template's output as pieces; `"".join(p.text)` equals the rendered template (`INTERNVL_CHAT_TEMPLATE`
    with `internvl`: no default system turn, images as `<IMG_CONTEXT>\n`)."""
    if not messages:
        raise TemplateError("no messages")

    def control(token: str, assistant: bool = False) -> _Piece:
        return _Piece(token, special=True, assistant=assistant, kind="control")

    def text(s: str, assistant: bool = False) -> _Piece:
        return _Piece(s, special=False, assistant=assistant)

    out: list[_Piece] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLES:
            raise TemplateError(f"message {i} has role {role!r}; expected one of {ROLES}")
        content = message.get("content")
        if i == 0 and role != "system" and not internvl:
            out += [
                control("<|im_start|>"),
                text(f"system\n{DEFAULT_SYSTEM_PROMPT}"),
                control("<|im_end|>"),
                text("\n"),
            ]
        is_answer = role == "assistant"
        out += [control("<|im_start|>"), text(f"{role}\n")]
        if isinstance(content, str):
            out.append(text(content, is_answer))
        elif isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
            for j, item in enumerate(content):
                if not isinstance(item, Mapping):
                    raise TemplateError(f"message {i} item {j} is {type(item).__name__}, not a dict")
                if _is_image_item(item) or _is_video_item(item):
                    if is_answer:
                        raise TemplateError(f"message {i}: images and videos are not allowed in assistant turns")
                    kind = "image" if _is_image_item(item) else "video"
                    if internvl:
                        out += [_Piece("<IMG_CONTEXT>" if kind == "image" else "<video>", True, False, kind),
                                text("\n")]
                        continue
                    pad = "<|image_pad|>" if kind == "image" else "<|video_pad|>"
                    out += [
                        control("<|vision_start|>"),
                        _Piece(pad, True, False, kind),
                        control("<|vision_end|>"),
                    ]
                elif "text" in item:
                    if not isinstance(item["text"], str):
                        raise TemplateError(f"message {i} item {j} text is {type(item['text']).__name__}")
                    out.append(text(item["text"], is_answer))
                else:
                    # The Jinja template would silently drop it; that is almost surely a bug upstream.
                    raise TemplateError(f"message {i} item {j} is neither text, image nor video: {sorted(item)}")
        else:
            raise TemplateError(f"message {i} content is {type(content).__name__}; expected str or list")
        out += [control("<|im_end|>", is_answer), text("\n")]
    if add_generation_prompt:
        out += [control("<|im_start|>"), text("assistant\n")]
    return out


def render_chat(messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False,
                internvl: bool = False) -> str:
    """The conversation as text, as `apply_chat_template(..., chat_template=CHAT_TEMPLATE, tokenize=False)`
    (`INTERNVL_CHAT_TEMPLATE` with `internvl`).

    Args:
      messages: OpenAI/HF style messages: `{"role": "system"|"user"|"assistant", "content": str | list}`,
        list items `{"type": "text", "text": ...}` or `{"type": "image"}`.
      add_generation_prompt: end with `<|im_start|>assistant\\n` for the model to answer.

    Returns:
      The rendered string, image pads not expanded (one `<|image_pad|>` per image).
    """
    return "".join(p.text for p in _pieces(messages, add_generation_prompt, internvl))


# Per tokenizer object: control-token strings, looked up once (building them per example would cost more
# than the tokenisation itself).
_CONTROLS: weakref.WeakKeyDictionary[Any, tuple[str, ...]] = weakref.WeakKeyDictionary()


def _control_strings(tokenizer: PreTrainedTokenizerFast) -> tuple[str, ...]:
    """Strings the tokenizer would turn into a special (control) token if they appeared in text.

    The build's list (`data_pipeline.validity.CONTROL_TOKENS`, which it rejects text for) first, then any
    other special token of this tokenizer (none for Qwen's own tokenizers).
    """
    controls = _CONTROLS.get(tokenizer)
    if controls is None:
        decoder = tokenizer.backend_tokenizer.get_added_tokens_decoder()
        extra = tuple(t.content for t in decoder.values() if t.special and t.content not in CONTROL_TOKENS)
        controls = CONTROL_TOKENS + extra
        _CONTROLS[tokenizer] = controls
    return controls


def encode_chat(
    tokenizer: PreTrainedTokenizerFast,
    messages: Sequence[Mapping[str, Any]],
    *,
    image_grids: Sequence[np.ndarray | Sequence[int]] = (),
    add_generation_prompt: bool = False,
    merge_size: int = MERGE_SIZE,
) -> EncodedChat:
    """Tokenises a conversation with its loss mask, image pads expanded.

    The ids equal `tokenizer.apply_chat_template(messages, chat_template=CHAT_TEMPLATE, tokenize=True)`
    with each `<|image_pad|>` repeated `num_image_tokens(grid)` times. A tokenizer with InternVL's image tokens
    (`tokenizer.tokenizer_image_tokens`) is encoded with `INTERNVL_CHAT_TEMPLATE`, each `<IMG_CONTEXT>` expanded
    to `<img>`, `<IMG_CONTEXT>` x that count, `</img>` as transformers' `InternVLProcessor` does (the grid of
    InternVL's tiles: (tiles, side, side) patches).

    Args:
      tokenizer: the Qwen tokenizer (`load_tokenizer()`).
      messages: see `render_chat`.
      image_grids: one `grid_thw` per image item, in the order the images appear in `messages`
        (the second output of `preprocess_image`).
      add_generation_prompt: end with `<|im_start|>assistant\\n` (evaluation and serving).
      merge_size: spatial merge of the vision tower.

    Returns:
      An `EncodedChat`.

    Raises:
      TemplateError: unknown roles or content items, images in assistant turns, videos, a number of
        grids that differs from the number of images, or text containing a control token such as
        `<|im_end|>` (it would be tokenised as the control token and break the turn structure).
    """
    image_tokens = tok_ids.tokenizer_image_tokens(tokenizer)
    internvl = image_tokens != tok_ids.QWEN_IMAGE_TOKENS
    pieces = _pieces(messages, add_generation_prompt, internvl)
    n_images = sum(p.kind == "image" for p in pieces)
    if any(p.kind == "video" for p in pieces):
        raise TemplateError("videos are not supported")
    if len(image_grids) != n_images:
        raise TemplateError(f"{n_images} image(s) in the messages but {len(image_grids)} grid(s) given")
    grids = np.asarray([np.asarray(g, dtype=np.int64).reshape(3) for g in image_grids], dtype=np.int64).reshape(-1, 3)

    controls = _control_strings(tokenizer)
    backend = tokenizer.backend_tokenizer
    ids: list[np.ndarray] = []
    mask: list[np.ndarray] = []
    run: list[_Piece] = []

    def flush() -> None:
        # Text between two control tokens is tokenised as one string, as apply_chat_template does.
        string = "".join(p.text for p in run)
        if string:
            for c in controls:
                if c in string:
                    raise TemplateError(f"text contains the control token {c!r}: {string[:200]!r}")
            # Per-character answer flags: a token counts as answer if any of its characters is (a token
            # straddles header and answer only when an answer starts with a newline).
            chars = np.concatenate([np.full(len(p.text), p.assistant, dtype=np.int64) for p in run])
            cumulative = np.concatenate([[0], np.cumsum(chars)])
            enc = backend.encode(string, add_special_tokens=False)
            offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            start = np.minimum(offsets[:, 0], len(string))
            end = np.minimum(np.maximum(offsets[:, 1], offsets[:, 0] + 1), len(string))
            ids.append(np.asarray(enc.ids, dtype=np.int32))
            mask.append(cumulative[end] - cumulative[start] > 0)
        run.clear()

    image_index = 0
    for piece in pieces:
        if not piece.special:
            run.append(piece)
            continue
        flush()
        count = 1
        if piece.kind == "image":
            count = num_image_tokens(grids[image_index], merge_size)
            image_index += 1
        token_id = backend.token_to_id(piece.text)
        if token_id is None:
            raise TemplateError(f"the tokenizer has no token {piece.text!r}")
        run_ids = np.full(count, token_id, dtype=np.int32)
        if internvl and piece.kind == "image":  # <img> ... </img> around the image's tokens, as InternVLProcessor
            opening, closing = (backend.token_to_id(t) for t in (image_tokens[0], image_tokens[2]))
            run_ids = np.concatenate([[opening], run_ids, [closing]]).astype(np.int32)
        ids.append(run_ids)
        mask.append(np.full(len(run_ids), piece.assistant, dtype=np.bool_))
    flush()
    return EncodedChat(
        token_ids=np.concatenate(ids).astype(np.int32),
        loss_mask=np.concatenate(mask).astype(np.bool_),
        image_grid_thw=grids,
        image_token_id=backend.token_to_id(image_tokens[1]),
    )


def _user_message(question: Question, instruction: str | None) -> Message:
    from data_pipeline.formats import render_question  # lazy: data_pipeline is a sibling package

    # Images first, then the question text, as in Qwen's own examples.
    content: list[dict[str, Any]] = [{"type": "image"} for _ in question.images]
    content.append({"type": "text", "text": render_question(question, instruction=instruction)})
    return {"role": "user", "content": content}


def messages_for_question(
    question: Question, system_prompt: str | None = None, *, instruction: str | None = None
) -> list[Message]:
    """The prompt messages of a question (no answer), for evaluation and serving.

    Args:
      question: the question; its images become `{"type": "image"}` items, in order.
      system_prompt: None for Qwen's default system prompt (inserted by the template).
      instruction: passed to `formats.render_question`.

    Returns:
      Messages for `encode_chat(..., add_generation_prompt=True)`.
    """
    messages: list[Message] = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": system_prompt})
    messages.append(_user_message(question, instruction))
    return messages


def messages_for_trace(
    trace: AcceptedTrace, *, system_prompt: str | None = None, instruction: str | None = None
) -> list[Message]:
    """The training conversation of an accepted trace: the question, then the formatted response.

    Args:
      trace: the accepted trace; `trace.response` is the assistant target as is.
      system_prompt: None for Qwen's default system prompt (inserted by the template).
      instruction: passed to `formats.render_question`.

    Returns:
      Messages for `encode_chat(..., add_generation_prompt=False)`.
    """
    messages = messages_for_question(trace.question, system_prompt, instruction=instruction)
    messages.append({"role": "assistant", "content": trace.response})
    return messages


def chat_template(system_prompt: str | None = None, *, internvl: bool = False) -> str:
    """The Jinja template to ship with a model trained with `system_prompt` as its default system turn.

    None gives `CHAT_TEMPLATE` itself. Otherwise the default system prompt inside it is replaced (as raw
    text: Jinja syntax in the prompt is not interpreted), so that transformers and vLLM prompt the model as
    `encode_chat` did in training when a conversation brings no system message of its own. `internvl`:
    `INTERNVL_CHAT_TEMPLATE`, which has no default system turn; a `system_prompt` becomes one.
    """
    if internvl:
        if system_prompt is None:
            return INTERNVL_CHAT_TEMPLATE
        return ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\n{% raw %}" + system_prompt
                + "{% endraw %}<|im_end|>\n{% endif %}" + INTERNVL_CHAT_TEMPLATE)
    if system_prompt is None:
        return CHAT_TEMPLATE
    default = f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>"
    assert CHAT_TEMPLATE.count(default) == 1
    return CHAT_TEMPLATE.replace(default, f"<|im_start|>system\n{{% raw %}}{system_prompt}{{% endraw %}}<|im_end|>")


def export_chat_template(directory: str | os.PathLike[str]) -> str:
    """Writes `CHAT_TEMPLATE` as `chat_template.jinja` into a checkpoint folder (read by transformers
    and vLLM); see also `tokenizer.save_tokenizer`.

    Returns:
      The path written.
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(os.fspath(directory), CHAT_TEMPLATE_FILENAME)
    with open(path, "w", encoding="utf-8") as f:
        f.write(CHAT_TEMPLATE)
    return path
