"""The demo world and its teacher: answerable questions, balanced classes, images readable by a rule,
teacher error rate, traces that parse, wrong traces rejected by the real rejection sampler; the experiments'
world options (scored text questions, too-easy stated image + text questions) and the teacher's styles."""

import collections
import re

import numpy as np
import pytest

from data_pipeline.answers import extract_answer
from data_pipeline.filters import rejection_sample
from data_pipeline.formats import split_teacher_response
from data_pipeline.sources import SOURCES, read_source
from data_pipeline.teachers import make_teacher
from octomed_demo import world as w

CATEGORIES = ("text", "mm_reasoning", "mm_classification")
pytestmark = pytest.mark.usefixtures("demo_plugin")  # the adapter and the teacher kind "demo" are the plugin's


@pytest.fixture(scope="module")
def train():
    return {c: list(w.generate_split(0, c, "train", 80)) for c in CATEGORIES}


def test_text_table_the_key_finding_decides():
    for i, disease in enumerate(w.TEXT_DISEASES):
        for common in w.COMMON_FINDINGS:
            assert w.text_diagnosis([common, w.FINDINGS[i]]) == disease
    for common in w.COMMON_FINDINGS:  # a non-specific finding alone decides nothing
        assert w.text_diagnosis([common]) is None
    assert w.text_diagnosis(["fever", "cough"]) is None  # two key findings: no single disease


def test_mm_table_needs_image_and_text():
    for disease in w.MM_DISEASES:
        assert len(w.mm_presentations(disease)) == 1
    for lesion in w.LESIONS:  # the image alone leaves two diseases open
        assert len({w.mm_diagnosis(lesion, f) for f in w.MM_FINDINGS}) == 2
    for f in w.MM_FINDINGS:  # the finding alone leaves four
        assert len({w.mm_diagnosis(lesion, f) for lesion in w.LESIONS}) == 4


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_question_is_answerable_from_its_text_and_pixels(train, category):
    for q in train[category]:
        q.validate()
        assert w.solve(q) == q.options[q.answer] == q.metadata["diagnosis"], q.key
        assert (len(q.images) == 1) == (category != "text")


@pytest.mark.parametrize("category", CATEGORIES)
def test_classes_are_balanced(train, category):
    counts = collections.Counter(q.metadata["diagnosis"] for q in train[category])
    assert len(counts) == w.option_counts()[category]
    assert max(counts.values()) - min(counts.values()) <= 1
    letters = collections.Counter(q.answer for q in train[category])
    assert len(letters) == w.option_counts()[category]


def test_image_class_is_recoverable_from_pixels_by_the_rule():
    rng = np.random.default_rng(5)
    for i in range(200):
        lesion = i % len(w.LESIONS)
        pixels = w.lesion_image(rng, lesion)
        assert pixels.shape == (w.IMAGE_SIZE, w.IMAGE_SIZE, 3) and pixels.dtype == np.uint8
        assert w.lesion_of_pixels(w.decode_png(w.png_bytes(pixels))) == lesion


def test_generation_is_seeded_and_splits_are_disjoint():
    a = list(w.generate_split(3, "mm_reasoning", "train", 12))
    b = list(w.generate_split(3, "mm_reasoning", "train", 12))
    assert a == b
    assert list(w.generate_split(4, "mm_reasoning", "train", 12)) != a
    # a prefix of a split does not depend on the split size
    assert list(w.generate_split(3, "mm_reasoning", "train", 5)) == a[:5]
    for category in CATEGORIES:
        tr = {(q.question, tuple(q.options.items()), tuple(i.data for i in q.images))
              for q in w.generate_split(0, category, "train", 200)}
        test = list(w.generate_split(0, category, "test", 40, num_train=200))
        assert len(test) == 40
        assert not tr & {(q.question, tuple(q.options.items()), tuple(i.data for i in q.images)) for q in test}


def test_registered_as_a_source_adapter():
    assert SOURCES["demo_world"] is w.SOURCE_ADAPTER
    # `name` is also read_source's own first parameter, so the adapter is called through the registry entry
    qs = list(SOURCES["demo_world"].read(".", split="test", category="text", name="demo_text", num_train=50,
                                         num_test=7, seed=0))
    assert [q.id for q in read_source("demo_world", ".", split="test", category="text", num_test=2)] == [
        "test-00000", "test-00001"]
    assert len(qs) == 7 and {q.source for q in qs} == {"demo_text"} and {q.split for q in qs} == {"test"}


def teacher(error_rate=0.35, truncation_rate=0.05, seed=0, n=8):
    return make_teacher(w.teacher_settings(error_rate=error_rate, truncation_rate=truncation_rate, seed=seed, n=n))


@pytest.mark.parametrize("category", CATEGORIES)
def test_teacher_error_rate_and_parsing(train, category):
    t = teacher()
    outcomes = collections.Counter()
    for q in train[category]:
        for c in t.sample(q, range(8)):
            reasoning, final = split_teacher_response(c.content)
            letter = extract_answer(final, q.options)
            if c.finish_reason == "length":
                assert letter is None and final == ""
                outcomes["cut"] += 1
                continue
            assert reasoning and c.content.startswith("<think>\n")
            assert letter is not None, c.content
            outcomes[letter == q.answer] += 1
    n = sum(outcomes.values())
    wrong = outcomes[False] / (outcomes[True] + outcomes[False])
    assert 0.28 <= wrong <= 0.42, outcomes  # 0.35 configured; 640 samples
    assert 0.01 <= outcomes["cut"] / n <= 0.10, outcomes


def test_teacher_is_deterministic_and_varies_its_wording(train):
    q = train["text"][0]
    a, b = teacher().sample(q, range(8)), teacher().sample(q, [7, 3])
    assert [c.content for c in b] == [a[7].content, a[3].content]
    assert [c.content for c in teacher(seed=1).sample(q, range(8))] != [c.content for c in a]
    correct = {c.content for q in train["text"][:10] for c in teacher(0.0, 0.0).sample(q, range(8))}
    assert len(correct) >= 20  # several phrasings per question, so K distinct traces exist


def test_correct_traces_cite_what_the_question_shows(train):
    t = teacher(error_rate=0.0, truncation_rate=0.0)
    for q in train["mm_reasoning"][:16]:
        for c in t.sample(q, range(4)):
            reasoning, _ = split_teacher_response(c.content)
            assert q.metadata["lesion"] in reasoning.lower() and q.metadata["findings"] in reasoning
            assert reasoning.endswith(f"{q.metadata['diagnosis']}, option {q.answer}.")


def test_wrong_traces_are_rejected_and_k_distinct_kept(train):
    t = teacher(error_rate=0.5)
    for q in train["mm_reasoning"][:20]:
        comps = t.sample(q, range(8))
        n_right = sum(extract_answer(split_teacher_response(c.content)[1], q.options) == q.answer for c in comps)
        r = rejection_sample(q, comps, k=4, response_format="cot", seed=0)
        assert r.n_correct == n_right
        assert r.dropped.get("wrong_answer", 0) + r.dropped.get("no_answer", 0) == 8 - n_right
        assert len(r.traces) <= 4 and len({tr.response for tr in r.traces}) == len(r.traces)
        for tr in r.traces:
            assert extract_answer(tr.response, q.options) == q.answer
    always_wrong = teacher(error_rate=1.0, truncation_rate=0.0)
    q = train["text"][0]
    r = rejection_sample(q, always_wrong.sample(q, range(8)), k=4, response_format="cot", seed=0)
    assert not r.traces and r.dropped == {"wrong_answer": 8}


# --- scored text questions (`scored_findings`, the experiments suite's world) ----------------------------------


@pytest.mark.parametrize("size,sets", [(2, 28), (3, 56)])
def test_scored_questions_add_points_and_hold_out_unseen_combinations(size, sets):
    train = list(w.generate_split(0, "text", "train", 320, scored_findings=size))
    test = list(w.generate_split(0, "text", "test", 40, num_train=320, scored_findings=size))
    for q in train + test:
        findings = q.metadata["findings"].split(",")
        total = sum(w.FINDING_POINTS[f] for f in findings) % 5
        assert q.options[q.answer] == w.TEXT_DISEASES[total] == w.solve(q), q.question
        assert len(set(findings)) == size and "finding score" in q.question
        assert all(f in q.question for f in findings)
    combos = lambda qs: {frozenset(q.metadata["findings"].split(",")) for q in qs}  # noqa: E731
    assert not combos(train) & combos(test)  # a held-out question is never a combination seen in training
    assert len(combos(test)) == 5 * w.SCORED_TEST_PER_DISEASE and len(combos(train)) == sets - len(combos(test))
    assert collections.Counter(q.answer for q in test) == {letter: 8 for letter in "ABCDE"}
    # The default world is untouched: two findings, the key one decides.
    assert list(w.generate_split(0, "text", "train", 5)) == list(w.generate_split(0, "text", "train", 5,
                                                                                   scored_findings=0))
    with pytest.raises(ValueError, match="scored_findings"):
        w.make_question(0, "text", "train", 0, scored_findings=4)


def _points_written(reasoning: str) -> list[int]:
    """The one-digit numbers a trace writes: points and running totals (scored traces write no other digit)."""
    return [int(n) for n in re.findall(r"\b\d\b", reasoning)]


@pytest.mark.parametrize("size", w.SCORED_SIZES)
def test_scored_traces_add_step_by_step_and_brief_ones_state_the_total(size):
    questions = list(w.generate_split(0, "text", "train", 40, scored_findings=size))
    right = teacher(error_rate=0.0, truncation_rate=0.0)
    brief = make_teacher(w.teacher_settings(error_rate=0.0, truncation_rate=0.0, style="brief"))
    wordings = set()
    for q in questions:
        findings = q.metadata["findings"].split(",")
        points = [w.FINDING_POINTS[f] for f in findings]
        for c in right.sample(q, range(16)):
            reasoning, final = split_teacher_response(c.content)
            assert extract_answer(final, q.options) == q.answer
            # Each finding's points, then each running total modulo 5, in the question's order; then the total.
            want = [points[0]] + [x for i in range(1, size) for x in (points[i], sum(points[:i + 1]) % 5)]
            assert _points_written(reasoning) == [*want, sum(points) % 5], reasoning
            assert [f for f in findings if f in reasoning.lower()] == findings
            wordings.add(reasoning.replace(q.question, ""))
        for c in brief.sample(q, range(4)):
            reasoning, final = split_teacher_response(c.content)
            assert extract_answer(final, q.options) == q.answer
            assert _points_written(reasoning) == [sum(points) % 5], reasoning  # the total alone
    # 2 wordings per addition and 4 endings: 16 samples give about W (1 - (1 - 1/W)^16) distinct traces of a
    # question (6.9 of W=8 for pairs, 10.3 of W=16 for triples), more than K=4 can keep (the default world has 4
    # wordings in all).
    wordings = 2 ** (size - 1) * 4
    per_question = [len({c.content for c in right.sample(q, range(16))}) for q in questions]
    mean = sum(per_question) / len(per_question)
    assert mean > 4 and abs(mean - wordings * (1 - (1 - 1 / wordings) ** 16)) < 1, per_question
    wrong = teacher(error_rate=1.0, truncation_rate=0.0)
    for q in questions[:10]:
        for c in wrong.sample(q, range(4)):
            reasoning, final = split_teacher_response(c.content)
            letter = extract_answer(final, q.options)
            assert letter != q.answer
            assert _points_written(reasoning)[-1] == w.TEXT_DISEASES.index(q.options[letter])  # its sum's end
    with pytest.raises(ValueError, match="style"):
        make_teacher(w.teacher_settings(style="terse"))
    assert w.teacher_settings()["prompt_version"] == "demo-v3-e0.35-t0.05-s0"  # the demo's stored samples stay


def test_stated_questions_are_too_easy_and_only_in_training():
    train = list(w.generate_split(0, "mm_reasoning", "train", 320, stated_fraction=0.4))
    test = list(w.generate_split(0, "mm_reasoning", "test", 40, num_train=320, stated_fraction=0.4))
    stated = [q for q in train if q.metadata.get("stated")]
    assert 0.3 <= len(stated) / len(train) <= 0.5 and not any(q.metadata.get("stated") for q in test)
    for q in stated:
        assert q.question.endswith(f"The referral says {q.metadata['diagnosis']}.")
    # The rest of a question (text, image, answer) is the one the default world makes.
    plain = {q.id: q for q in w.generate_split(0, "mm_reasoning", "train", 320)}
    for q in train:
        assert (q.answer, q.images, q.question.split(" The referral")[0]) == (
            plain[q.id].answer, plain[q.id].images, plain[q.id].question)
    # Every teacher, however weak, answers a stated question right every time: 16 of 16, what the pass-rate
    # filters drop; other questions keep the teacher's error rate.
    weak = teacher(error_rate=0.7, truncation_rate=0.05, n=16)
    for q in stated[:10]:
        comps = weak.sample(q, range(16))
        assert all(extract_answer(split_teacher_response(c.content)[1], q.options) == q.answer for c in comps)
    unstated = [q for q in train if not q.metadata.get("stated")][:10]
    right = sum(extract_answer(split_teacher_response(c.content)[1], q.options) == q.answer
                for q in unstated for c in weak.sample(q, range(16)))
    assert right < 0.5 * 160
    with pytest.raises(ValueError, match="stated_fraction"):
        w.make_question(0, "mm_reasoning", "train", 0, stated_fraction=1.0)


def test_the_demo_judge_rates_by_the_facts_a_question_takes():
    """The judge style rates difficulty through the real judge prompt's parser and filter: a stated answer 1, an
    image's lesion 2, a text's key finding 3, a finding and a lesion 5, a scored question 4 + its findings; 10%
    misjudged by 2. The paper's 3..6 keeps the image + text questions and drops the stated ones."""
    from data_pipeline.filters import judge_keep, judge_score

    judge = make_teacher({**w.teacher_settings(error_rate=0.0, n=1, style="judge"), "name": "demo-judge"})
    mm = list(w.generate_split(0, "mm_reasoning", "train", 120, stated_fraction=0.4))
    scores = {q.id: judge_score(judge.sample(q, [0])) for q in mm}
    assert all(scores[q.id] == (1 if q.metadata.get("stated") else 5) for q in mm)
    assert [judge_keep(scores[q.id], 3, 6) for q in mm] == [not q.metadata.get("stated") for q in mm]
    for category, want in (("mm_classification", 2), ("text", 3)):
        q = next(w.generate_split(0, category, "train", 1))
        assert judge_score(judge.sample(q, [0])) == want
    q = next(w.generate_split(0, "text", "train", 1, scored_findings=3))
    assert judge_score(judge.sample(q, [0])) == 7
    noisy = make_teacher({**w.teacher_settings(error_rate=0.1, n=1, style="judge"), "name": "demo-judge"})
    off = [abs(judge_score(noisy.sample(q, [0])) - scores[q.id]) for q in mm]
    assert set(off) <= {0, 2} and 0.03 <= sum(d > 0 for d in off) / len(mm) <= 0.2  # 1 -> 1 when clipped
