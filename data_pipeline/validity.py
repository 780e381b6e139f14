"""What text a training example may hold: no control token of the chat template (pure, no JAX).

The Qwen tokenizer turns these strings into their special ids wherever they appear, even inside a
question or a teacher's answer, so `<|im_end|><|im_start|>user` in a trace would end the assistant turn
and open a new one. The chat template (`octomed_jax.data.template.encode_chat`) refuses such text; the
build applies the same list first, so that nothing it accepts is refused at training time:

- a question whose stem or an option contains one is rejected when read (counted as `control_tokens`),
  before any teacher is asked: escaping it would change the text the teacher and the student see;
- a teacher sample whose formatted response contains one is dropped by rejection sampling (counted as
  `control_tokens` among the dropped samples), so another correct sample can take its place.

Images are checked by `data_pipeline.images` under the rules `preprocess_image` applies.
"""

from __future__ import annotations

from data_pipeline.records import BadRecordError, Question

CONTROL_REASON = "control_tokens"

# The added tokens that Qwen2.5-VL's tokenizer (and the Qwen3 files we tokenize with by default) mark as
# special, ids 151643..151656. `<think>`, `</think>`, `<tool_call>` ... are added but not special: text may
# hold them. `octomed_jax.data.template` imports this list; tests compare it with the tokenizer's.
CONTROL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def find_control_token(text: str, controls: tuple[str, ...] = CONTROL_TOKENS) -> str | None:
    """The first of `controls` (in list order) that `text` contains, or None."""
    return next((c for c in controls if c in text), None)


def check_question_text(question: Question) -> None:
    """Refuses a question whose stem or options hold a control token.

    Raises:
      BadRecordError: `control_tokens`, naming the question, the field and the token.
    """
    fields = [("question", question.question)] + [(f"option {k}", v) for k, v in question.options.items()]
    for field, text in fields:
        token = find_control_token(text)
        if token is not None:
            raise BadRecordError(
                CONTROL_REASON, f"{question.label}: {field} contains the control token {token!r}; fix the source row"
            )
