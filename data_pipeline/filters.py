"""Rejection sampling, K distinct traces per question, and the question filters of the recipe.

- Rejection sampling keeps a completion only when `answers.extract_answer` of its final text equals
  the ground-truth letter (`answers` is the only answer parser in the repo).
- Up to K *distinct* accepted traces are kept per question: identical formatted texts are kept once,
  and when more than K remain the choice is a seeded draw that depends only on (seed, question key),
  so it does not depend on the order completions arrived in. A formatted text holding a control token
  of the chat template is dropped (`data_pipeline.validity`): training would refuse it.
- Pass-rate filter: keep questions with lo..hi correct of n. The same function serves the teacher's
  and the student's pass rate (the student is just another OpenAI-compatible endpoint).
- LLM-judge difficulty filter: a judge prompt to an endpoint, an integer 1..10 parsed from the reply,
  keep a range. Judge outputs live in the completion store under the judge's own name and version.
"""

from __future__ import annotations

import dataclasses
import random
import re
import statistics
from collections.abc import Sequence
from typing import Any

from data_pipeline.hashing import stable_hash
from data_pipeline.records import AcceptedTrace, Question
from data_pipeline.teachers import Completion, TeacherConfig, question_messages
from data_pipeline.validity import CONTROL_REASON, find_control_token

JUDGE_PROMPT_VERSION = "judge-v1"
JUDGE_SYSTEM_PROMPT = (
    "You are an experienced medical educator. You rate how difficult multiple-choice questions are "
    "for a strong medical student."
)
JUDGE_INSTRUCTION = (
    "Rate the difficulty of the question below on an integer scale from 1 (trivial recall) to 10 "
    "(requires expert, multi-step reasoning). The correct answer is given for reference. "
    "Think briefly, then end your reply with a line of the form `Difficulty: N`."
)


@dataclasses.dataclass(frozen=True)
class Graded:
    """One completion, graded against the ground truth."""

    completion: Completion
    letter: str | None
    correct: bool
    reasoning: str | None
    final: str


@dataclasses.dataclass(frozen=True)
class RejectionResult:
    """The outcome of rejection sampling for one question.

    Attributes:
      question: the question.
      n_sampled: completions looked at.
      n_correct: completions whose answer equals the ground truth.
      traces: the kept traces (at most K, distinct, ordered by sample index).
      dropped: completions dropped, by reason ("wrong_answer", "no_answer", "duplicate",
        "empty_reasoning", "control_tokens", "over_k").
    """

    question: Question
    n_sampled: int
    n_correct: int
    traces: tuple[AcceptedTrace, ...]
    dropped: dict[str, int]


def grade(question: Question, completion: Completion) -> Graded:
    """Splits a completion into reasoning and final text and checks the final answer."""
    from data_pipeline.answers import extract_answer
    from data_pipeline.formats import split_teacher_response

    reasoning, final = split_teacher_response(completion.content, completion.reasoning_content)
    letter = extract_answer(final, question.options)
    return Graded(completion, letter, letter == question.answer, reasoning, final)


def count_correct(question: Question, completions: Sequence[Completion]) -> int:
    """How many completions answer `question` correctly."""
    return sum(grade(question, c).correct for c in completions)


def pass_rate_keep(n_correct: int, lo: int, hi: int) -> bool:
    """True when lo <= n_correct <= hi (the paper keeps 2..14 of 16)."""
    return lo <= n_correct <= hi


def _seeded_rng(seed: int, question: Question, salt: str) -> random.Random:
    return random.Random(stable_hash(salt, seed, question.key))


def rejection_sample(
    question: Question,
    completions: Sequence[Completion],
    *,
    k: int,
    response_format: str,
    seed: int,
) -> RejectionResult:
    """Keeps up to `k` distinct correct completions of `question`, formatted as SFT targets.

    Args:
      question: the question with its ground-truth letter.
      completions: the teacher's samples (any order).
      k: the most traces to keep (1, 4, 16 ...).
      response_format: "cot" (the teacher's reasoning in <think>, then its own concluding answer) or "direct"
        (our answer line only).
      seed: the recipe seed; the choice among more than k traces depends only on it and the key.

    Returns:
      A RejectionResult; its traces are sorted by sample index.
    """
    from data_pipeline.formats import format_response, split_conclusion

    if response_format not in ("cot", "direct"):
        raise ValueError(f"response_format must be 'cot' or 'direct', got {response_format!r}")
    dropped: dict[str, int] = {}

    def drop(reason: str, count: int = 1) -> None:
        dropped[reason] = dropped.get(reason, 0) + count

    ordered = sorted(completions, key=lambda c: c.sample_index)
    n_correct = 0
    distinct: dict[str, AcceptedTrace] = {}
    option_text = question.options[question.answer]
    for c in ordered:
        g = grade(question, c)
        if not g.correct:
            drop("no_answer" if g.letter is None else "wrong_answer")
            continue
        n_correct += 1
        # The trace as the teacher wrote it: a reasoning model's reasoning and its own final text; a plain
        # reply (GPT-4o) split into its reasoning and its concluding answer (formats.split_conclusion).
        reasoning, final = g.reasoning, g.final
        if reasoning is None:
            reasoning, final = split_conclusion(g.final, question.options, question.answer)
        if response_format == "cot" and not reasoning.strip():
            drop("empty_reasoning")  # a CoT target without reasoning would teach the direct format
            continue
        text = format_response(
            style=response_format,
            letter=question.answer,
            option_text=option_text,
            reasoning=reasoning if response_format == "cot" else None,
            final=final,
        )
        if find_control_token(text) is not None:
            drop(CONTROL_REASON)  # the chat template would refuse it at training time (data_pipeline.validity)
            continue
        if text in distinct:
            drop("duplicate")  # the direct format makes every correct sample the same text
            continue
        distinct[text] = AcceptedTrace(
            question=question,
            response=text,
            format=response_format,
            teacher=c.teacher,
            sample_index=c.sample_index,
        )
    traces = list(distinct.values())
    if len(traces) > k:
        drop("over_k", len(traces) - k)
        traces = _seeded_rng(seed, question, "k-traces").sample(traces, k)
        traces.sort(key=lambda t: t.sample_index)
    return RejectionResult(question, len(ordered), n_correct, tuple(traces), dropped)


# ---------------------------------------------------------------------------------------------
# LLM judge.


def judge_messages(question: Question, config: TeacherConfig, image_root: str | None = None) -> list[dict[str, Any]]:
    """The judge prompt for a question: its images, the rendered question, and the correct answer.

    Pass as `message_builder` to `OpenAITeacher` with `prompt_version=JUDGE_PROMPT_VERSION`.
    """
    messages = question_messages(question, dataclasses.replace(config, system_prompt=None), image_root)
    user = messages[-1]
    answer = f"Correct answer: {question.answer}. {question.options[question.answer]}"
    text = f"{JUDGE_INSTRUCTION}\n\n{{}}\n\n{answer}"
    if isinstance(user["content"], str):
        user["content"] = text.format(user["content"])
    else:
        part = user["content"][-1]
        part["text"] = text.format(part["text"])
    return [{"role": "system", "content": config.system_prompt or JUDGE_SYSTEM_PROMPT}, user]


_SCORE_PATTERNS = (
    re.compile(r"difficulty(?:\s+(?:score|rating|level))?\s*(?:is|=|:)?\s*\**\s*(\d+)", re.I),
    re.compile(r"\\boxed\{\s*(\d+)\s*\}"),
    re.compile(r"\b(\d+)\s*/\s*10\b"),
    re.compile(r"\b(?:score|rating)\s*(?:is|=|:)?\s*\**\s*(\d+)", re.I),
)


def parse_judge_score(text: str | None) -> int | None:
    """The difficulty 1..10 a judge reply ends with; None when there is no such integer.

    Looks, in order, for "Difficulty: N", "\\boxed{N}", "N/10", "score: N", then a reply that is only
    an integer; of each pattern the last match wins (judges restate the scale first).
    """
    if not text:
        return None
    for pat in _SCORE_PATTERNS:
        found = pat.findall(text)
        if found:
            value = int(found[-1])
            return value if 1 <= value <= 10 else None
    stripped = text.strip().rstrip(".")
    if stripped.isdigit():
        value = int(stripped)
        return value if 1 <= value <= 10 else None
    return None


def judge_score(completions: Sequence[Completion]) -> int | None:
    """The judged difficulty of a question: the (low) median of its parsable judge replies."""
    scores = [s for c in completions if (s := parse_judge_score(c.content)) is not None]
    return statistics.median_low(scores) if scores else None


def judge_keep(score: int | None, lo: int, hi: int) -> bool:
    """True when the score is known and lo <= score <= hi (the paper keeps 3..6)."""
    return score is not None and lo <= score <= hi
