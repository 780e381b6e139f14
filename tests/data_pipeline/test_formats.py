"""Question rendering, answer lines, response formats and teacher-response splitting."""

from __future__ import annotations

import string

import pytest

from data_pipeline.answers import extract_answer
from data_pipeline.formats import (
    DEFAULT_INSTRUCTION,
    answer_line,
    format_response,
    render_question,
    split_conclusion,
    split_teacher_response,
)
from data_pipeline.records import Question

Q = Question(
    id="1",
    source="medqa",
    category="text",
    question="  A 60-year-old man has tearing chest pain. What is the diagnosis?  ",
    options={"A": "Myocardial infarction", "B": "Aortic dissection", "C": "Pericarditis"},
    answer="B",
)


def test_render_question_exact_text():
    assert render_question(Q) == (
        "A 60-year-old man has tearing chest pain. What is the diagnosis?\n"
        "\n"
        "A. Myocardial infarction\n"
        "B. Aortic dissection\n"
        "C. Pericarditis\n"
        "Answer with the option's letter from the given choices."
    )
    assert render_question(Q, instruction="Think step by step.").endswith("C. Pericarditis\nThink step by step.")
    assert render_question(Q, instruction="").endswith("C. Pericarditis")
    assert DEFAULT_INSTRUCTION in render_question(Q)
    assert "<image>" not in render_question(Q)


# Option texts chosen to tempt the extractor: letters, braces, a fake box, the word "answer".
TRICKY = [
    "Vitamin A",
    "Hepatitis C {acute}",
    "The answer is B",
    "\\boxed{D}",
    "A or C",
    "D-dimer.",
    "",
]


@pytest.mark.parametrize("letter", list(string.ascii_uppercase))
def test_answer_line_round_trips_every_letter(letter):
    n = string.ascii_uppercase.index(letter) + 1
    for text in TRICKY:
        options = {L: f"option {L}" for L in string.ascii_uppercase[:n]}
        options[letter] = text or "x"
        line = answer_line(letter, text)
        assert extract_answer(line, options) == letter, line
        cot = format_response(style="cot", letter=letter, option_text=text, reasoning="I think A is wrong.")
        assert extract_answer(cot, options) == letter, cot


def test_answer_line_form():
    assert answer_line("c", "Pericarditis.") == "The answer is \\boxed{C} (Pericarditis)."
    assert answer_line("B", "") == "The answer is \\boxed{B}."
    assert answer_line("D", "\\boxed{A}") == "The answer is \\boxed{D} (boxedA)."


def test_format_response():
    cot = format_response(style="cot", letter="B", option_text="Aortic dissection", reasoning="  Tearing pain.  ")
    assert cot == "<think>\nTearing pain.\n</think>\n\nThe answer is \\boxed{B} (Aortic dissection)."
    direct = format_response(style="direct", letter="B", option_text="Aortic dissection", reasoning="ignored")
    assert direct == "The answer is \\boxed{B} (Aortic dissection)."
    # The teacher's own think tags are not nested inside ours.
    nested = format_response(style="cot", letter="A", option_text="x", reasoning="<think>r</think>")
    assert nested.count("<think>") == 1 and nested.count("</think>") == 1
    with pytest.raises(ValueError, match="reasoning"):
        format_response(style="cot", letter="A", option_text="x", reasoning=" ")
    with pytest.raises(ValueError, match="style"):
        format_response(style="long", letter="A", option_text="x", reasoning="r")  # type: ignore[arg-type]


def test_split_teacher_response():
    # DeepSeek-R1 API: reasoning in its own field.
    assert split_teacher_response("The answer is C.", "Step 1 ...") == ("Step 1 ...", "The answer is C.")
    assert split_teacher_response("<think>dup</think>\nThe answer is C.", "Step 1") == ("Step 1", "The answer is C.")
    # Inline think (raw R1, OctoMed released traces).
    assert split_teacher_response("<think>\nweigh A vs B\n</think>\n\nThe answer is B") == (
        "weigh A vs B",
        "The answer is B",
    )
    # Some servers strip the opening tag.
    assert split_teacher_response("weigh</think>B") == ("weigh", "B")
    # Truncated: no final part.
    assert split_teacher_response("<think>long reasoning cut off") == ("long reasoning cut off", "")
    # Plain answer (GPT-4o).
    assert split_teacher_response("  The answer is A.  ", None) == (None, "The answer is A.")
    assert split_teacher_response(None, "") == (None, "")
    assert split_teacher_response("<think></think>A") == (None, "A")


OPTIONS = {"A": "Aspirin", "B": "Heparin", "C": "Pericarditis", "D": "Aortic dissection"}


def _targets(completion_kwargs: dict) -> list[str]:
    from data_pipeline.filters import rejection_sample
    from data_pipeline.records import Question
    from data_pipeline.teachers import Completion

    q = Question(source="medqa", id="q1", question="Chest pain radiating to the back?", options=OPTIONS, answer="D",
                 category="text")
    c = Completion(question_key=q.key, teacher="t", prompt_version="v", sample_index=0, **completion_kwargs)
    return [t.response for t in rejection_sample(q, [c], k=1, response_format="cot", seed=0).traces]


def test_cot_target_keeps_r1s_own_final_text():
    # DeepSeek-R1 through its API: the reasoning field, then its own concluding text, kept verbatim.
    final = "**Final answer:** D. Aortic dissection, given the tearing pain and unequal pulses."
    assert _targets(dict(content=final, reasoning_content="Tearing pain... unequal arm pressures.")) == [
        "<think>\nTearing pain... unequal arm pressures.\n</think>\n\n" + final
    ]
    # Inline think (raw R1, OctoMed's released traces) gives the same target.
    assert _targets(dict(content=f"<think>\nTearing pain... unequal arm pressures.\n</think>\n\n{final}")) == [
        "<think>\nTearing pain... unequal arm pressures.\n</think>\n\n" + final
    ]


def test_cot_target_splits_gpt4o_reply_at_its_conclusion():
    reply = "Step 1: the pain tears.\n\nStep 2: pulses differ, so not A.\n\nThe answer is \\boxed{D}."
    assert _targets(dict(content=reply)) == [
        "<think>\nStep 1: the pain tears.\n\nStep 2: pulses differ, so not A.\n</think>\n\nThe answer is \\boxed{D}."
    ]
    # No blank line before the answer: the last line is the conclusion.
    assert _targets(dict(content="Tearing pain, unequal pulses.\nAnswer: D")) == [
        "<think>\nTearing pain, unequal pulses.\n</think>\n\nAnswer: D"
    ]
    # The answer stated first: no closing part to keep, so the whole reply is the reasoning + our answer line.
    first = "D is correct.\n\nThe tearing pain and unequal pulses point to it."
    assert _targets(dict(content=first)) == [f"<think>\n{first}\n</think>\n\n{answer_line('D', 'Aortic dissection')}"]


def test_split_conclusion_needs_the_graded_letter():
    reply = "Weighing A against D.\n\nThe answer is \\boxed{A}."
    assert split_conclusion(reply, OPTIONS, "A") == ("Weighing A against D.", "The answer is \\boxed{A}.")
    assert split_conclusion(reply, OPTIONS, "D") == (reply, None)
    assert split_conclusion("The answer is \\boxed{A}.", OPTIONS, "A") == ("The answer is \\boxed{A}.", None)
