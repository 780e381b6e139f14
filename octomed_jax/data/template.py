"""THE chat template of the repository: training, evaluation and serving all prompt through it.

Each model family prompts with its base checkpoint's own Jinja template, verbatim (`TEMPLATES`, named by
`FamilyTraits.chat_template` and recorded in the run contract's `prompting.template`):
- `CHAT_TEMPLATE` (qwen2_5_vl), Qwen2.5-VL-Instruct's `chat_template.json`: a default system prompt "You are a
  helpful assistant." when the conversation has none, `<|im_start|>role\\n ... <|im_end|>\\n` turns, and each
  image as `<|vision_start|><|image_pad|><|vision_end|>`;
- `QWEN3_VL_CHAT_TEMPLATE` (qwen3_vl), Qwen3-VL-Instruct's: the same turns and images, no default system turn,
  a system message only in first place;
- `INTERNVL_CHAT_TEMPLATE` (internvl), the InternVL "-HF" checkpoints': no default system turn, each image
  `<IMG_CONTEXT>\\n`.
Keeping them verbatim means a fine-tuned checkpoint is prompted by transformers and vLLM exactly as the base
model was, and exactly as we train it.

`encode_chat` renders the same layout in Python and tokenises it piece by piece: special tokens become
ids directly, the text between two special tokens goes through the tokenizer as one string (as it does
inside `apply_chat_template`, whose tokenizer splits at special tokens first), and character offsets
tell which tokens belong to an assistant answer. Each image's single `<|image_pad|>` is expanded to one
pad per merged patch, `grid_t * grid_h * grid_w / merge_size**2`, as Qwen's processor does.
"""

from __future__ import annotations

import dataclasses
import json
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

# Qwen3-VL-{2B,4B,8B,32B}-Instruct's chat template, character for character (their `chat_template.json`). It
# differs from Qwen2.5-VL's in what the student sees: no default system turn, and a system message only first
# (a later one is dropped by the template; `encode_chat` refuses it). Tools and tool turns are rendered by the
# template but never by `encode_chat` (no tool use in the recipe).
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0].role == 'system' %}\n"
    "        {%- if messages[0].content is string %}\n            {{- messages[0].content }}\n"
    "        {%- else %}\n            {%- for content in messages[0].content %}\n"
    "                {%- if 'text' in content %}\n                    {{- content.text }}\n"
    "                {%- endif %}\n            {%- endfor %}\n        {%- endif %}\n"
    "        {{- '\\n\\n' }}\n    {%- endif %}\n"
    "    {{- \"# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided "
    "with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0].role == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' }}\n        {%- if messages[0].content is string %}\n"
    "            {{- messages[0].content }}\n        {%- else %}\n"
    "            {%- for content in messages[0].content %}\n                {%- if 'text' in content %}\n"
    "                    {{- content.text }}\n                {%- endif %}\n            {%- endfor %}\n"
    "        {%- endif %}\n        {{- '<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n"
    "{%- set image_count = namespace(value=0) %}\n{%- set video_count = namespace(value=0) %}\n"
    "{%- for message in messages %}\n    {%- if message.role == \"user\" %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' }}\n        {%- if message.content is string %}\n"
    "            {{- message.content }}\n        {%- else %}\n            {%- for content in message.content %}\n"
    "                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}\n"
    "                    {%- set image_count.value = image_count.value + 1 %}\n"
    "                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}\n"
    "                    <|vision_start|><|image_pad|><|vision_end|>\n"
    "                {%- elif content.type == 'video' or 'video' in content %}\n"
    "                    {%- set video_count.value = video_count.value + 1 %}\n"
    "                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}\n"
    "                    <|vision_start|><|video_pad|><|vision_end|>\n                {%- elif 'text' in content %}\n"
    "                    {{- content.text }}\n                {%- endif %}\n            {%- endfor %}\n"
    "        {%- endif %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' }}\n        {%- if message.content is string %}\n"
    "            {{- message.content }}\n        {%- else %}\n"
    "            {%- for content_item in message.content %}\n                {%- if 'text' in content_item %}\n"
    "                    {{- content_item.text }}\n                {%- endif %}\n            {%- endfor %}\n"
    "        {%- endif %}\n        {%- if message.tool_calls %}\n"
    "            {%- for tool_call in message.tool_calls %}\n"
    "                {%- if (loop.first and message.content) or (not loop.first) %}\n"
    "                    {{- '\\n' }}\n                {%- endif %}\n                {%- if tool_call.function %}\n"
    "                    {%- set tool_call = tool_call.function %}\n                {%- endif %}\n"
    "                {{- '<tool_call>\\n{\"name\": \"' }}\n                {{- tool_call.name }}\n"
    "                {{- '\", \"arguments\": ' }}\n                {%- if tool_call.arguments is string %}\n"
    "                    {{- tool_call.arguments }}\n                {%- else %}\n"
    "                    {{- tool_call.arguments | tojson }}\n                {%- endif %}\n"
    "                {{- '}\\n</tool_call>' }}\n            {%- endfor %}\n        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n"
    "        {%- if loop.first or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {%- if message.content is string %}\n            {{- message.content }}\n        {%- else %}\n"
    "            {%- for content in message.content %}\n"
    "                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}\n"
    "                    {%- set image_count.value = image_count.value + 1 %}\n"
    "                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}\n"
    "                    <|vision_start|><|image_pad|><|vision_end|>\n"
    "                {%- elif content.type == 'video' or 'video' in content %}\n"
    "                    {%- set video_count.value = video_count.value + 1 %}\n"
    "                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}\n"
    "                    <|vision_start|><|video_pad|><|vision_end|>\n                {%- elif 'text' in content %}\n"
    "                    {{- content.text }}\n                {%- endif %}\n            {%- endfor %}\n"
    "        {%- endif %}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)

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

# The templates by name: `FamilyTraits.chat_template`, `Prompting.template`.
TEMPLATES: dict[str, str] = {
    "qwen2_5_vl": CHAT_TEMPLATE,
    "qwen3_vl": QWEN3_VL_CHAT_TEMPLATE,
    "internvl": INTERNVL_CHAT_TEMPLATE,
}
# Templates that write a default system turn when the conversation has none (`DEFAULT_SYSTEM_PROMPT`).
_DEFAULT_SYSTEM_TURN = ("qwen2_5_vl",)

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


def template_named(name: str) -> str:
    """The Jinja source of the template `name` (`TEMPLATES`).

    Raises:
      TemplateError: an unknown name.
    """
    if name not in TEMPLATES:
        raise TemplateError(f"chat template {name!r}: known templates {tuple(TEMPLATES)}")
    return TEMPLATES[name]


def _pieces(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool, template: str = "qwen2_5_vl"
            ) -> list[_Piece]:
    """The template's output as pieces; `"".join(p.text)` equals the rendered template `TEMPLATES[template]`
    (qwen3_vl and internvl: no default system turn; internvl: images as `<IMG_CONTEXT>\n`)."""
    template_named(template)
    if not messages:
        raise TemplateError("no messages")
    internvl = template == "internvl"

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
        if role == "system" and i > 0 and template == "qwen3_vl":
            # Qwen3-VL's template renders a system message only in first place and drops any other silently.
            raise TemplateError(f"message {i} is a system message: the {template} template takes one only first")
        if i == 0 and role != "system" and template in _DEFAULT_SYSTEM_TURN:
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
                    if role == "system" and template == "qwen3_vl":  # the template drops them silently
                        raise TemplateError(f"message {i}: the {template} template shows no images in a system turn")
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
                template: str = "qwen2_5_vl") -> str:
    """The conversation as text, as `apply_chat_template(..., chat_template=TEMPLATES[template], tokenize=False)`.

    Args:
      messages: OpenAI/HF style messages: `{"role": "system"|"user"|"assistant", "content": str | list}`,
        list items `{"type": "text", "text": ...}` or `{"type": "image"}`.
      add_generation_prompt: end with `<|im_start|>assistant\\n` for the model to answer.
      template: the template's name (`TEMPLATES`).

    Returns:
      The rendered string, image pads not expanded (one `<|image_pad|>` per image).
    """
    return "".join(p.text for p in _pieces(messages, add_generation_prompt, template))


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
    template: str | None = None,
) -> EncodedChat:
    """Tokenises a conversation with its loss mask, image pads expanded.

    The ids equal `tokenizer.apply_chat_template(messages, chat_template=TEMPLATES[template], tokenize=True)`
    with each `<|image_pad|>` repeated `num_image_tokens(grid)` times. With the internvl template (InternVL's image
    tokens) each `<IMG_CONTEXT>` is expanded to `<img>`, `<IMG_CONTEXT>` x that count, `</img>` as transformers'
    `InternVLProcessor` does (the grid of InternVL's tiles: (tiles, side, side) patches).

    Args:
      tokenizer: the Qwen tokenizer (`load_tokenizer()`).
      messages: see `render_chat`.
      image_grids: one `grid_thw` per image item, in the order the images appear in `messages`
        (the second output of `preprocess_image`).
      add_generation_prompt: end with `<|im_start|>assistant\\n` (evaluation and serving).
      merge_size: spatial merge of the vision tower.
      template: the template's name (`TEMPLATES`; the run contract's `prompting.template`); None: the one the
        tokenizer's image tokens imply (internvl for InternVL's, else qwen2_5_vl).

    Returns:
      An `EncodedChat`.

    Raises:
      TemplateError: unknown roles or content items, images in assistant turns, videos, a number of
        grids that differs from the number of images, text containing a control token such as
        `<|im_end|>` (it would be tokenised as the control token and break the turn structure), or a template
        whose image tokens are not the tokenizer's.
    """
    image_tokens = tok_ids.tokenizer_image_tokens(tokenizer)
    internvl = image_tokens != tok_ids.QWEN_IMAGE_TOKENS
    if template is None:
        template = "internvl" if internvl else "qwen2_5_vl"
    elif (template == "internvl") != internvl:
        raise TemplateError(f"the {template} chat template needs {'InternVL' if template == 'internvl' else 'Qwen'}'s "
                            f"image tokens; the tokenizer has {image_tokens}")
    pieces = _pieces(messages, add_generation_prompt, template)
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


# Where Qwen3-VL's template closes its first system turn (the branch without tools): a default system turn
# goes in an `else` here.
_QWEN3_VL_SYSTEM_END = "        {{- '<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- set image_count"


def chat_template(system_prompt: str | None = None, *, template: str = "qwen2_5_vl") -> str:
    """The Jinja template to ship with a model trained with `system_prompt` as its default system turn.

    None gives `TEMPLATES[template]` itself. Otherwise the prompt becomes the system turn of a conversation that
    brings none, so that transformers and vLLM prompt the model as `encode_chat` did in training: qwen2_5_vl's
    default system prompt is replaced (as raw text: Jinja syntax in the prompt is not interpreted); qwen3_vl and
    internvl, which have no default system turn, get one (qwen3_vl: as a Jinja string literal, in the branch
    without tools).
    """
    template_named(template)
    if template == "qwen3_vl":
        if system_prompt is None:
            return QWEN3_VL_CHAT_TEMPLATE
        assert QWEN3_VL_CHAT_TEMPLATE.count(_QWEN3_VL_SYSTEM_END) == 1
        literal = json.dumps(system_prompt, ensure_ascii=False)  # JSON's escapes are Jinja string escapes
        default = f"    {{%- else %}}\n        {{{{- '<|im_start|>system\\n' + {literal} + '<|im_end|>\\n' }}}}\n"
        head, tail = _QWEN3_VL_SYSTEM_END.split("    {%- endif %}\n{%- endif %}", 1)
        return QWEN3_VL_CHAT_TEMPLATE.replace(
            _QWEN3_VL_SYSTEM_END, head + default + "    {%- endif %}\n{%- endif %}" + tail)
    if template == "internvl":
        if system_prompt is None:
            return INTERNVL_CHAT_TEMPLATE
        return ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\n{% raw %}" + system_prompt
                + "{% endraw %}<|im_end|>\n{% endif %}" + INTERNVL_CHAT_TEMPLATE)
    if system_prompt is None:
        return CHAT_TEMPLATE
    default = f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>"
    assert CHAT_TEMPLATE.count(default) == 1
    return CHAT_TEMPLATE.replace(default, f"<|im_start|>system\n{{% raw %}}{system_prompt}{{% endraw %}}<|im_end|>")


def export_chat_template(directory: str | os.PathLike[str], template: str = "qwen2_5_vl") -> str:
    """Writes `TEMPLATES[template]` as `chat_template.jinja` into a checkpoint folder (read by transformers
    and vLLM); see also `tokenizer.save_tokenizer`.

    Returns:
      The path written.
    """
    source = template_named(template)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(os.fspath(directory), CHAT_TEMPLATE_FILENAME)
    with open(path, "w", encoding="utf-8") as f:
        f.write(source)
    return path
