"""Rejection sampling, K distinct traces, pass-rate and judge filters."""

from __future__ import annotations

import pytest

from data_pipeline.filters import (
    count_correct,
    judge_keep,
    judge_messages,
    judge_score,
    parse_judge_score,
    pass_rate_keep,
    rejection_sample,
)
from data_pipeline.records import Question
from data_pipeline.teachers import Completion, TeacherConfig

Q = Question(
    id="7",
    source="medqa",
    category="text",
    question="Which drug?",
    options={"A": "Aspirin", "B": "Heparin", "C": "Warfarin"},
    answer="B",
)


def c(i: int, content: str, reasoning: str | None = None) -> Completion:
    return Completion(Q.key, "r1", "v1", i, content, reasoning)


def test_rejection_keeps_exactly_the_correct_traces():
    comps = [
        c(0, "The answer is \\boxed{B}.", "Heparin acts fast."),
        c(1, "The answer is \\boxed{A}.", "Aspirin?"),  # wrong
        c(2, "I am not sure."),  # no answer
        c(3, "<think>Think about warfarin.</think>Answer: C"),  # wrong
        c(4, "<think>Unfractionated heparin.</think>\nThe answer is (B)."),
        c(5, "Step 1: anticoagulant needed now. So B. Heparin\n\nThe answer is B"),  # GPT-4o style
        c(6, "The answer is \\boxed{B}.", "Heparin acts fast."),  # duplicate of 0
    ]
    r = rejection_sample(Q, list(reversed(comps)), k=16, response_format="cot", seed=0)
    assert r.n_sampled == 7 and r.n_correct == 4
    assert [t.sample_index for t in r.traces] == [0, 4, 5]
    assert r.dropped == {"wrong_answer": 2, "no_answer": 1, "duplicate": 1}
    t0 = r.traces[0]
    # Each target is the trace as the teacher wrote it: its reasoning in <think>, then its own conclusion.
    assert t0.response == "<think>\nHeparin acts fast.\n</think>\n\nThe answer is \\boxed{B}."
    assert t0.format == "cot" and t0.teacher == "r1" and t0.question == Q
    assert r.traces[1].response == "<think>\nUnfractionated heparin.\n</think>\n\nThe answer is (B)."
    assert r.traces[2].response == (  # GPT-4o style: split at its concluding paragraph
        "<think>\nStep 1: anticoagulant needed now. So B. Heparin\n</think>\n\nThe answer is B"
    )
    assert count_correct(Q, comps) == 4


def test_direct_format_dedupes_to_one_trace():
    comps = [c(i, f"Reasoning {i}. The answer is \\boxed{{B}}.") for i in range(5)]
    r = rejection_sample(Q, comps, k=4, response_format="direct", seed=0)
    assert [t.response for t in r.traces] == ["The answer is \\boxed{B} (Heparin)."]
    assert r.dropped == {"duplicate": 4}


@pytest.mark.parametrize("k", [1, 4, 16])
def test_k_distinct_deterministic_in_seed(k):
    comps = [c(i, "The answer is \\boxed{B}.", f"Reason number {i}.") for i in range(16)]
    a = rejection_sample(Q, comps, k=k, response_format="cot", seed=1)
    b = rejection_sample(Q, list(reversed(comps)), k=k, response_format="cot", seed=1)
    assert len(a.traces) == k
    assert len({t.response for t in a.traces}) == k
    assert a.traces == b.traces  # order of arrival does not matter
    idx = [t.sample_index for t in a.traces]
    assert idx == sorted(idx)
    if k < 16:
        assert a.dropped == {"over_k": 16 - k}
        other = [
            tuple(t.sample_index for t in rejection_sample(Q, comps, k=k, response_format="cot", seed=s).traces)
            for s in range(2, 8)
        ]
        assert len(set(other) | {tuple(idx)}) > 1  # another seed draws other traces


def test_pass_rate_thresholds():
    assert [pass_rate_keep(x, 2, 14) for x in (0, 1, 2, 8, 14, 15, 16)] == [
        False, False, True, True, True, False, False,
    ]  # fmt: skip
    comps = [c(i, f"The answer is \\boxed{{{'B' if i < 3 else 'A'}}}.") for i in range(16)]
    assert count_correct(Q, comps) == 3 and pass_rate_keep(count_correct(Q, comps), 2, 14)


@pytest.mark.parametrize(
    "text,score",
    [
        ("Difficulty: 7", 7),
        ("The scale is 1-10.\nDifficulty: 4/10", 4),
        ("**Difficulty:** 10", 10),
        ("difficulty rating = 3", 3),
        ("Easy question. \\boxed{2}", 2),
        ("I'd say 6/10.", 6),
        ("5", 5),
        ("Score: 8", 8),
        ("Difficulty: 0", None),
        ("Difficulty: 11", None),
        ("No idea.", None),
        ("", None),
        ("Difficulty: 3. On reflection, Difficulty: 5", 5),
    ],
)
def test_parse_judge_score(text, score):
    assert parse_judge_score(text) == score


def test_judge_score_and_keep():
    comps = [c(0, "Difficulty: 3"), c(1, "garbage"), c(2, "Difficulty: 8"), c(3, "Difficulty: 5")]
    assert judge_score(comps) == 5
    assert judge_score([c(0, "none")]) is None
    assert [judge_keep(s, 3, 6) for s in (None, 2, 3, 6, 7)] == [False, False, True, True, False]


def test_judge_messages_include_question_and_answer():
    cfg = TeacherConfig(name="judge", base_url="http://x", model="m")
    msgs = judge_messages(Q, cfg)
    assert msgs[0]["role"] == "system" and "difficult" in msgs[0]["content"]
    user = msgs[1]["content"]
    assert "Which drug?" in user and "B. Heparin" in user and "Correct answer: B. Heparin" in user
    assert "Difficulty: N" in user
