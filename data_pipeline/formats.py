"""The one place that defines how a question is shown and how the training target is written.

Teacher prompts, chat templates, training targets and evaluation all go through these functions, so the
student is trained on exactly the text it is evaluated with, and `answers.extract_answer` reads back every
answer line written here (tested for every letter).

The CoT target is the trace as the teacher wrote it, in the paper's format (reasoning inside `<think>`, then
the answer; docs/paper.md "Images and response format"):
- a reasoning model (DeepSeek-R1: `reasoning_content`, or inline `<think>...</think>`, as in OctoMed's released
  traces): `<think>` + its reasoning + `</think>` + its own final text, verbatim (the text the answer was
  graded on);
- a plain reply (GPT-4o): its last paragraph (else its last line) when that alone states the graded answer is
  the conclusion, kept verbatim after `</think>`, and everything before it is the reasoning;
- a plain reply with no such closing part (it states the answer first): the whole reply is the reasoning and
  our answer line (`answer_line`) follows `</think>`.
Only the teacher's own `<think>` / `</think>` tags are removed (a nested tag would end the reasoning early).
The direct target is our answer line alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from data_pipeline.records import Question

DEFAULT_INSTRUCTION = "Answer with the option's letter from the given choices."
COT = "cot"
DIRECT = "direct"


def render_question(q: Question, *, instruction: str | None = None) -> str:
    """The user text of a question: stem, blank line, `A. text` lines, then the instruction line.

    Args:
      q: the question.
      instruction: the last line; None gives `DEFAULT_INSTRUCTION`, "" leaves the line out.

    Returns:
      The text. It contains no image placeholders: the chat template places the images.
    """
    lines = [q.question.strip(), ""]
    lines += [f"{letter}. {text.strip()}" for letter, text in q.options.items()]
    instruction = DEFAULT_INSTRUCTION if instruction is None else instruction
    if instruction:
        lines.append(instruction)
    return "\n".join(lines)


def answer_line(letter: str, option_text: str) -> str:
    """The final answer line: `The answer is \\boxed{C} (option text).`

    The letter sits in `\\boxed{}`, the extractor's first choice; the option text follows outside the box,
    cleaned of braces and backslashes so it can never open a second box.
    """
    letter = letter.strip().upper()
    text = re.sub(r"[\\{}]", "", option_text).strip().rstrip(".")
    return f"The answer is \\boxed{{{letter}}} ({text})." if text else f"The answer is \\boxed{{{letter}}}."


def format_response(
    *,
    style: Literal["cot", "direct"],
    letter: str,
    option_text: str,
    reasoning: str | None = None,
    final: str | None = None,
) -> str:
    """The assistant target.

    Args:
      style: "cot" (reasoning in `<think>`, then the answer) or "direct" (the answer line only).
      letter: the answer letter.
      option_text: that option's text.
      reasoning: the teacher's reasoning, required for "cot".
      final: the teacher's own concluding text (what it wrote after its reasoning, answer included), kept
        verbatim after `</think>`; None writes our answer line there instead. Ignored for "direct".

    Returns:
      `<think>\n{reasoning}\n</think>\n\n{final or answer line}` or the answer line.

    Raises:
      ValueError: an unknown style, or "cot" without reasoning.
    """
    line = answer_line(letter, option_text)
    if style == DIRECT:
        return line
    if style != COT:
        raise ValueError(f"unknown response style {style!r}; expected 'cot' or 'direct'")
    if not reasoning or not reasoning.strip():
        raise ValueError("a cot response needs non-empty reasoning")
    # Nested think tags would end the reasoning early in the template; the teacher's own tags are dropped.
    body = _without_think_tags(reasoning)
    conclusion = _without_think_tags(final) if final is not None else ""
    return f"<think>\n{body}\n</think>\n\n{conclusion or line}"


def _without_think_tags(text: str) -> str:
    return text.replace("<think>", "").replace("</think>", "").strip()


_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def split_conclusion(reply: str, options: Mapping[str, str], letter: str) -> tuple[str, str | None]:
    """Splits a plain reply (no separate reasoning: GPT-4o) into its reasoning and its own concluding answer.

    The conclusion is the reply's last paragraph when that paragraph alone states `letter`
    (`answers.extract_answer`), else its last line when that line does, provided reasoning remains before it.
    A reply whose answer is not in such a closing part (the answer first, then the reasons) has no separable
    conclusion: the whole reply is the reasoning and the conclusion is None.

    Args:
      reply: the teacher's whole reply.
      options: the question's options (letter -> text).
      letter: the answer the reply was graded to give.

    Returns:
      (reasoning, conclusion or None).
    """
    from data_pipeline.answers import extract_answer

    text = reply.strip()
    cuts = [m.start() for m in _PARAGRAPH_BREAK.finditer(text)][-1:] + [text.rfind("\n")]
    for cut in cuts:
        if cut <= 0:
            continue
        head, tail = text[:cut].strip(), text[cut:].strip()
        if head and tail and extract_answer(tail, options) == letter:
            return head, tail
    return text, None


def split_teacher_response(content: str | None, reasoning_content: str | None = None) -> tuple[str | None, str]:
    """Separates a teacher's reasoning from its final text.

    Handles DeepSeek-R1 style APIs (reasoning in a separate `reasoning_content`), inline
    `<think>...</think>` (R1 served raw, OctoMed's released traces), and plain answers (GPT-4o).

    Args:
      content: the message content.
      reasoning_content: the separate reasoning field, if the API has one.

    Returns:
      (reasoning, final): reasoning is None when the response has none (a plain answer; a CoT caller may
      then use `final` as the reasoning). For an unclosed `<think>` (a truncated response), the reasoning is
      the text after it and `final` is "".
    """
    content = content or ""
    if reasoning_content and reasoning_content.strip():
        # Some servers also echo the think block inside content; keep only what follows it.
        final = content.rsplit("</think>", 1)[1] if "</think>" in content else content
        return reasoning_content.strip(), final.strip()
    if "</think>" in content:
        head, final = content.split("</think>", 1)
        reasoning = head.split("<think>", 1)[1] if "<think>" in head else head
        return reasoning.strip() or None, final.strip()
    if "<think>" in content:
        return content.split("<think>", 1)[1].strip() or None, ""
    return None, content.strip()
