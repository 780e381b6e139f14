"""A small synthetic medical world for the demo: questions generated from a seed, shipped as code.

Nothing here is medical fact: it is a closed world with its own knowledge tables, small enough for a
tiny student to learn in minutes on a CPU, and built so that each of the paper's three question
categories needs what it needs in the real data:

- text: a vignette names a key finding and a non-specific one (seen with every disease); the diagnosis
  is the disease of `TEXT_DISEASES` whose key finding it is, so the student must find the one word
  that decides among words that do not.
- mm_classification: a 56x56 "scan" with one round lesion on a noisy grey background; the lesion's
  colour is its class (`LESIONS`). `lesion_of_pixels` recovers it with a fixed rule.
- mm_reasoning: the finding in the text gives the form (acute with fever, chronic with pain) and the lesion
  in the image the rest of the name: `mm_diagnosis` gives one of 8 diseases ("acute cyst"), so the image
  alone leaves two open and the text alone four. The name composes one text fact and one image fact word
  for word, and the teacher reasons in that order (finding, form, lesion, diagnosis, its option letter), so
  each step of a trace depends on one fact close before it: a student this small learns the combination in
  minutes.

Questions are multiple choice over every disease (or lesion) of their table, always listed in table
order, like the graded options of a classification benchmark (5 options for text, 4 for image
classification, 8 for image + text). A fixed option order makes the letter a function of the diagnosis: a
student this small would otherwise spend most of a CPU budget learning to look up which letter precedes a
name. Questions are `Question` records like the real sources', with disjoint "train" and "test" splits;
question i of a split depends only on (seed, category, split, i), so any prefix of a split is the same
whatever its size.

`DemoTeacher` (teacher kind "demo") answers like a real teacher would: it reads the question text and the
image pixels, consults the tables, and writes a short chain of thought; it is wrong (or cut off) at a
configurable rate, deterministically per (question, sample index, seed).

The source adapter (`SOURCE_ADAPTER`, named "demo_world", reader `read_demo_world`) reads no files: its
`path` is ignored. Importing this module registers nothing: `octomed_demo.register()` adds the adapter and
the teacher kind to the registries, for configs that list "octomed_demo" in `plugins`. Imports no JAX.
"""

from __future__ import annotations

import functools
import io
import itertools
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline import formats
from data_pipeline.hashing import stable_hash
from data_pipeline.records import LETTERS, ImageRef, Question
from data_pipeline.sources import SourceAdapter
from data_pipeline.teachers import Completion, TeacherConfig

IMAGE_SIZE = 56  # 4x4 patches of 14 px -> 4 merged vision tokens per image
SPLIT_SALT = {"train": 0, "test": 1}

# Text: five findings on a cycle; disease i has findings i and i+1.
FINDINGS = ("fever", "rash", "itching", "jaundice", "cough")  # key findings: FINDINGS[i] means TEXT_DISEASES[i]
COMMON_FINDINGS = ("fatigue", "headache", "nausea")  # seen with every disease: they decide nothing
TEXT_DISEASES = ("measles", "eczema", "allergy", "hepatitis", "pneumonia")

# Images: the lesion's colour is its class.
LESIONS = ("hemorrhage", "exudate", "cyst", "nodule")
LESION_COLOURS = ("red", "yellow", "blue", "green")
LESION_RGB = ((210, 30, 30), (210, 210, 30), (30, 60, 220), (30, 190, 60))

# Image + text: finding j with lesion i is "<form j> <lesion i>", one presentation per disease.
MM_FINDINGS = ("fever", "pain")
MM_FORMS = ("acute", "chronic")  # MM_FINDINGS[i] gives MM_FORMS[i]
MM_DISEASES = tuple(f"{form} {lesion}" for lesion in LESIONS for form in MM_FORMS)

# Scored text questions (a source's `scored_findings=N`; the experiments suite's world): the question names N
# findings, every finding scores points, and the diagnosis is the total's place on the disease cycle
# (TEXT_DISEASES[total % 5]). A direct answer must add the scores in one pass; a chain of thought adds them one at
# a time, each step one small fact. The
# test split asks only combinations of findings that the train split never shows (`scored_combinations`), so a
# remembered combination answers no held-out question: the rule must be learned.
SCORED_FINDINGS = FINDINGS + COMMON_FINDINGS
FINDING_POINTS = dict(zip(SCORED_FINDINGS, (1, 2, 3, 4, 0, 1, 2, 3), strict=True))
SCORED_SIZES = (2, 3)  # findings per scored question
SCORED_TEST_PER_DISEASE = 2  # held-out combinations of findings per disease (10 of the 28 pairs or 56 triples)

TEXT_STEM = "A {age}-year-old {sex} has {f1} and {f2}. What is the most likely diagnosis?"
# The findings open the stem, which is otherwise the same for every scored question, so they stand at the same
# distance from the answer each time. The demo's student learned to copy them in 300 steps neither this way nor
# with an age and sex before them (docs/experiments.md); this is the simpler of the two.
SCORED_STEM = "Findings: {findings}. What is the diagnosis by the finding score?"
CLASSIFICATION_STEM = "Which lesion does this scan show?"
MM_STEM = "A {age}-year-old {sex} has {finding}. The scan is shown. What is the most likely diagnosis?"
# A too-easy image + text question (a source's `stated_fraction`; train split only): the stem states the answer,
# so every teacher and student gets it right and a trace teaches copying, not reading the scan. The pass-rate
# filters drop such questions (16 of 16 right); unfiltered training spends steps on them.
STATED = " The referral says {diagnosis}."


def mm_diagnosis(lesion: str, finding: str) -> str:
    """The disease of a lesion class (which disease) with a finding (which form)."""
    return MM_DISEASES[len(MM_FORMS) * LESIONS.index(lesion) + MM_FINDINGS.index(finding)]


def mm_presentations(disease: str) -> list[tuple[str, str]]:
    """The (lesion, finding) pairs that mean `disease`."""
    return [(lesion, f) for lesion in LESIONS for f in MM_FINDINGS if mm_diagnosis(lesion, f) == disease]


def scored_diagnosis(findings: Sequence[str]) -> str:
    """The disease of a scored question's findings: the total of their points, modulo the five diseases."""
    return TEXT_DISEASES[sum(FINDING_POINTS[f] for f in findings) % len(TEXT_DISEASES)]


@functools.lru_cache(maxsize=16)  # read for every scored question generated; the same for a (seed, split, size)
def scored_combinations(seed: int, split: str, size: int) -> dict[str, tuple[tuple[str, ...], ...]]:
    """The sets of `size` findings a split's scored questions use, by disease (table order within a set).

    Of all such sets, `SCORED_TEST_PER_DISEASE` per disease (chosen by a seeded hash) belong to the test split
    and the rest to the train split: the splits never share a combination. Shared (cached): read only.
    """
    ranked = sorted(itertools.combinations(SCORED_FINDINGS, size), key=lambda c: stable_hash("scored", seed, *c))
    test: dict[str, list[tuple[str, ...]]] = {d: [] for d in TEXT_DISEASES}
    train: dict[str, list[tuple[str, ...]]] = {d: [] for d in TEXT_DISEASES}
    for combo in ranked:
        d = scored_diagnosis(combo)
        (test if len(test[d]) < SCORED_TEST_PER_DISEASE else train)[d].append(combo)
    return {d: tuple(sets) for d, sets in (test if split == "test" else train).items()}


def text_diagnosis(findings: Sequence[str]) -> str | None:
    """The disease of the one key finding among `findings`, or None (no key finding, or two)."""
    keys = {f for f in findings if f in FINDINGS}
    return TEXT_DISEASES[FINDINGS.index(keys.pop())] if len(keys) == 1 else None


# --- images -------------------------------------------------------------------------------------------------


def lesion_image(rng: np.random.Generator, lesion: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 [size, size, 3]: a noisy grey background with one round lesion of class `lesion`'s colour.

    The lesion covers the image's centre, so each of the four merged vision tokens (28 x 28 pixels) holds
    some of it: with smaller, off-centre lesions a student this small took several times longer to tell
    the colours apart (two classes confused after 400 steps on some seeds).
    """
    grey = rng.uniform(100, 150)
    img = grey + rng.normal(0.0, 10.0, (size, size, 1)) + rng.normal(0.0, 4.0, (size, size, 3))
    radius = rng.uniform(0.3, 0.4) * size
    cy, cx = size / 2 + rng.uniform(-0.1, 0.1, 2) * size
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    colour = np.asarray(LESION_RGB[lesion], np.float64) + rng.normal(0.0, 12.0, 3)
    img[inside] = colour + rng.normal(0.0, 8.0, (int(inside.sum()), 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    """PNG encoding of a uint8 RGB array (deterministic for the same pixels)."""
    import PIL.Image

    buf = io.BytesIO()
    PIL.Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """uint8 [H, W, 3] from encoded image bytes."""
    import PIL.Image

    return np.asarray(PIL.Image.open(io.BytesIO(data)).convert("RGB"))


def lesion_of_pixels(pixels: np.ndarray) -> int:
    """The lesion class an image shows, by a fixed rule: the colour of its pixels far from the median grey.

    Pixels whose channels spread (max - min) more than 60 are lesion pixels (the background is grey,
    every lesion colour is saturated); their mean colour's nearest `LESION_RGB` is the class.
    """
    p = pixels.astype(np.float64)
    spread = p.max(axis=-1) - p.min(axis=-1)
    lesion = p[spread > 60]
    if lesion.shape[0] == 0:
        lesion = p.reshape(-1, 3)
    mean = lesion.mean(axis=0)
    return int(np.argmin([np.sum((mean - np.asarray(c)) ** 2) for c in LESION_RGB]))


# --- questions ----------------------------------------------------------------------------------------------


def _rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, SPLIT_SALT[split], stable_hash(category) & 0xFFFF, index])


def _options(table: Sequence[str], answer: str) -> tuple[dict[str, str], str]:
    """Every entry of the table as an option, in table order, and the answer's letter."""
    return {LETTERS[i]: t for i, t in enumerate(table)}, LETTERS[table.index(answer)]


def _person(rng: np.random.Generator) -> dict[str, Any]:
    return {"age": int(rng.integers(18, 86)), "sex": ("man", "woman")[int(rng.integers(2))]}


def _text_question(rng: np.random.Generator, index: int) -> tuple[str, dict[str, str], str, None, dict[str, str]]:
    d = index % len(TEXT_DISEASES)  # balanced over diseases
    key = FINDINGS[d]
    common = COMMON_FINDINGS[int(rng.integers(len(COMMON_FINDINGS)))]
    f1, f2 = (key, common) if rng.integers(2) else (common, key)
    options, answer = _options(TEXT_DISEASES, TEXT_DISEASES[d])
    stem = TEXT_STEM.format(f1=f1, f2=f2, **_person(rng))
    return stem, options, answer, None, {"findings": f"{f1},{f2}", "diagnosis": TEXT_DISEASES[d]}


def _scored_text_question(rng: np.random.Generator, index: int, combinations: Mapping[str, Sequence[tuple[str, ...]]]
                          ) -> tuple[str, dict[str, str], str, None, dict[str, str]]:
    disease = TEXT_DISEASES[index % len(TEXT_DISEASES)]  # balanced over diseases
    sets = combinations[disease]
    findings = [str(f) for f in rng.permutation(sets[int(rng.integers(len(sets)))])]
    options, answer = _options(TEXT_DISEASES, disease)
    stem = SCORED_STEM.format(findings=", ".join(findings))
    return stem, options, answer, None, {"findings": ",".join(findings), "diagnosis": disease}


def _classification_question(rng: np.random.Generator, index: int) -> tuple[Any, ...]:
    lesion = index % len(LESIONS)
    options, answer = _options(LESIONS, LESIONS[lesion])
    pixels = lesion_image(rng, lesion)
    return CLASSIFICATION_STEM, options, answer, pixels, {"lesion": LESIONS[lesion], "diagnosis": LESIONS[lesion]}


def _mm_question(rng: np.random.Generator, index: int) -> tuple[Any, ...]:
    pairs = [(lesion, f) for lesion in LESIONS for f in MM_FINDINGS]
    lesion, finding = pairs[index % len(pairs)]  # balanced over the 8 presentations
    diagnosis = mm_diagnosis(lesion, finding)
    options, answer = _options(MM_DISEASES, diagnosis)
    pixels = lesion_image(rng, LESIONS.index(lesion))
    stem = MM_STEM.format(finding=finding, **_person(rng))
    meta = {"lesion": lesion, "findings": finding, "diagnosis": diagnosis}
    return stem, options, answer, pixels, meta


_MAKERS = {"text": _text_question, "mm_classification": _classification_question, "mm_reasoning": _mm_question}


def make_question(seed: int, category: str, split: str, index: int, *, source: str | None = None,
                  scored_findings: int = 0, stated_fraction: float = 0.0) -> Question:
    """Question `index` of a split; depends only on its arguments.

    `scored_findings`: 0, a text question names a key finding and a non-specific one (the demo's world); 2 or 3,
    it names that many scored findings (`SCORED_STEM`, the experiments suite's world). `stated_fraction`: the
    share of image + text train questions whose stem states the answer (`STATED`; chosen by a seeded hash).
    """
    if not 0.0 <= stated_fraction < 1.0:
        raise ValueError(f"demo world: stated_fraction is in [0, 1), not {stated_fraction}")
    if category not in _MAKERS:
        raise ValueError(f"demo world has no category {category!r}; known: {sorted(_MAKERS)}")
    if scored_findings not in (0, *SCORED_SIZES):
        raise ValueError(f"demo world: scored_findings is 0 (a key finding decides) or one of {SCORED_SIZES}, not "
                         f"{scored_findings}")
    rng = _rng(seed, category, split, index)
    if category == "text" and scored_findings:
        made = _scored_text_question(rng, index, scored_combinations(seed, split, scored_findings))
    else:
        made = _MAKERS[category](rng, index)
    stem, options, answer, pixels, meta = made
    if (category == "mm_reasoning" and split == "train" and stated_fraction > 0
            and stable_hash("stated", seed, index) % 10_000 < stated_fraction * 10_000):
        stem, meta = stem + STATED.format(diagnosis=meta["diagnosis"]), {**meta, "stated": "1"}
    images = () if pixels is None else (ImageRef(data=png_bytes(pixels), format="png"),)
    return Question(
        id=f"{split}-{index:05d}",
        source=source or f"demo_{category}",
        category=category,
        question=stem,
        options=options,
        answer=answer,
        images=images,
        split=split,
        metadata=meta,
    ).validate()


def _signature(q: Question) -> tuple[Any, ...]:
    """What makes two questions the same question for a student: text, options, image bytes."""
    return q.question, tuple(q.options.items()), tuple(im.data for im in q.images)


def generate_split(
    seed: int, category: str, split: str, num_questions: int, *, source: str | None = None, num_train: int = 0,
    scored_findings: int = 0, stated_fraction: float = 0.0,
) -> Iterator[Question]:
    """The questions of a split, in order.

    Args:
      seed: the world's seed.
      category: "text", "mm_reasoning" or "mm_classification".
      split: "train" or "test".
      num_questions: how many.
      source: the questions' `source` (default `demo_<category>`).
      num_train: for the test split, the size of the train split it must not overlap: a test question
        equal to one of those (same text, options and image) is skipped and the next index generated, so
        the split is still a pure function of its arguments.
      scored_findings, stated_fraction: `make_question`'s.

    Yields:
      `Question`s.
    """
    if split not in SPLIT_SALT:
        raise ValueError(f"demo world splits are {sorted(SPLIT_SALT)}, not {split!r}")
    train = set()
    if split == "test" and num_train:
        train = {_signature(q) for q in generate_split(
            seed, category, "train", num_train, source=source, scored_findings=scored_findings,
            stated_fraction=stated_fraction)}
    made, i = 0, 0
    while made < num_questions:
        q = make_question(seed, category, split, i, source=source, scored_findings=scored_findings,
                          stated_fraction=stated_fraction)
        i += 1
        if _signature(q) not in train:
            made += 1
            yield q


def read_demo_world(
    path: str | Path,
    *,
    split: str = "train",
    seed: int = 0,
    category: str = "text",
    name: str = "",
    num_train: int = 400,
    num_test: int = 40,
    scored_findings: int = 0,
    stated_fraction: float = 0.0,
    **_: Any,
) -> Iterator[Question]:
    """Source adapter: the demo world's questions of one category; `path` is not read (nothing on disk).

    Args:
      path: ignored (recipes write "."; the build checks that it exists).
      split: "train" (`num_train` questions) or "test" (`num_test`, none equal to a train question).
      seed: the world's seed (the recipe seed unless the entry sets one).
      category: which category.
      name: the questions' `source` (default `demo_<category>`).
      num_train: train split size.
      num_test: held-out split size.
      scored_findings: for text questions, 0 (a key finding decides) or 2 or 3 (scored findings: `SCORED_STEM`).
      stated_fraction: the share of image + text train questions that state their answer (`STATED`).

    Yields:
      `Question`s (never `Rejected`: generated questions are valid by construction).
    """
    del path
    kw: dict[str, Any] = dict(source=name or None, scored_findings=int(scored_findings),
                              stated_fraction=float(stated_fraction))
    if split == "train":
        return generate_split(seed, category, "train", num_train, **kw)
    return generate_split(seed, category, split, num_test, num_train=num_train, **kw)


SOURCE_ADAPTER = SourceAdapter(
    "demo_world", read_demo_world, "mixed", "the demo's synthetic world, generated (no files)"
)


def held_out(recipe: Any, *, limit: int | None = None) -> list[Question]:
    """The held-out ("test") questions of every `demo_world` source of a recipe, `limit` per source."""
    out: list[Question] = []
    for key in sorted(recipe.sources):
        entry = recipe.sources[key]
        if entry.adapter != SOURCE_ADAPTER.name:
            continue
        options = dict(entry.options.to_dict()) if hasattr(entry.options, "to_dict") else dict(entry.options)
        options.setdefault("seed", int(recipe.seed))
        if limit is not None:
            options["num_test"] = min(int(limit), int(options.get("num_test", limit)))
        out.extend(read_demo_world(entry.path, split="test", **options))
    return out


# --- the teacher --------------------------------------------------------------------------------------------

_TEXT_REASONING = (
    "The key finding is {fa}; {fb} is non-specific. {Fa} means {d}.",
    "{Fa} points to {d}.",
    "Of {fa} and {fb}, only {fa} decides: {d}.",
    "{Fa}: this is {d}.",
)
_CLASS_REASONING = (
    "The scan shows a {colour} lesion, {a} {lesion}.",
    "A {colour} spot is visible: {lesion}.",
    "The lesion is {colour}, so it is {a} {lesion}.",
    "{Colour} lesion, which means {lesion}.",
)
_MM_REASONING = (  # the text fact, then the image fact, then the name they compose
    "With {finding}, {form}. The scan shows a {colour} lesion, {a} {lesion}. So {d}.",
    "Finding {finding}: {form}. {Colour} lesion: {lesion}. Diagnosis: {d}.",
    "The {finding} means {form}; the {colour} lesion is {a} {lesion}: {d}.",
    "Text: {finding}, {form}. Image: {colour} {lesion}. This is {d}.",
)


# Scored questions: the reasoning-style teacher adds the findings' points one at a time in the question's order
# ("Fever 1, rash 2 makes 3, headache 2 makes 0. 0 is measles"), in short steps a small student learns in a few
# hundred steps; two wordings per addition and four endings give 16 wordings of a trace, so K=16 keeps up to 16
# distinct traces of a question (the demo world's questions have 4). The instruction-style ("brief") teacher
# states the total without the steps.
_SCORED_NEXT = (", {f} {p} makes {t}", ", {f} {p} gives {t}")
_SCORED_END = ("{t} is {d}", "{t} means {d}", "Total {t}, so {d}", "Score {t}: {d}")
_SCORED_BRIEF = ("The score is {t}: {d}", "Score {t}, so {d}", "The findings total {t}: {d}")
# The demo teacher's `style` (extra_body): how much of a scored sum it writes; "judge": it rates the question's
# difficulty instead of answering it (`judge_difficulty`), as the judge filter's endpoint does.
STYLES = ("reasoning", "brief", "judge")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def read_question(question: Question) -> dict[str, Any]:
    """What a reader of the question sees: findings named in the text (in order), the lesion in the image."""
    stem = question.question.lower()
    vocab = FINDINGS + COMMON_FINDINGS if question.category == "text" else MM_FINDINGS
    found = sorted((stem.index(f), f) for f in vocab if re.search(rf"\b{f}\b", stem))
    seen: dict[str, Any] = {"findings": [f for _, f in found], "scored": "finding score" in stem}
    stated = re.search(r"The referral says (.+?)\.$", question.question)
    if stated:
        seen["stated"] = stated.group(1)
    if question.images and question.images[0].data is not None:
        seen["lesion"] = LESIONS[lesion_of_pixels(decode_png(question.images[0].data))]
    return seen


def solve(question: Question, seen: Mapping[str, Any] | None = None) -> str | None:
    """The diagnosis the tables give for what the question shows (text and pixels only, not the key).

    `seen`: `read_question(question)` when the caller has it already (decoding the image is the costly part).
    """
    seen = read_question(question) if seen is None else seen
    if "stated" in seen:
        return seen["stated"]
    if question.category == "text":
        return scored_diagnosis(seen["findings"]) if seen.get("scored") else text_diagnosis(seen["findings"])
    if question.category == "mm_classification":
        return seen.get("lesion")
    if "lesion" in seen and len(seen["findings"]) == 1:
        return mm_diagnosis(seen["lesion"], seen["findings"][0])
    return None


def judge_difficulty(question: Question, seen: Mapping[str, Any]) -> tuple[int, str]:
    """The difficulty 1..10 a careful judge gives a question of this world, with its reason: by the facts an answer
    takes. A stem that states its answer takes none (1); an image's lesion alone, one fact (2); a text's key finding,
    one fact among distractors (3); a finding and a lesion together (5); a scored question, one step per finding
    added (4 + findings). The paper's judge filter keeps 3..6 (`configs/base.py`)."""
    if "stated" in seen:
        return 1, "the stem states the answer"
    if question.category == "mm_classification":
        return 2, "one fact: the lesion in the image"
    if question.category == "text":
        if seen.get("scored"):
            n = len(seen["findings"])
            return min(10, 4 + n), f"{n} findings' points added up"
        return 3, "one fact: the key finding among findings that decide nothing"
    return 5, "two facts: the form from the text's finding and the lesion from the image"


def _judge_reply(question: Question, seen: Mapping[str, Any], rng: random.Random, error_rate: float) -> str:
    """A judge's reply ending "Difficulty: N" (`data_pipeline.filters.parse_judge_score`); with probability
    `error_rate` the judge misjudges by 2 either way, as real judges are noisy."""
    score, reason = judge_difficulty(question, seen)
    if rng.random() < error_rate:
        score = min(10, max(1, score + rng.choice((-2, 2))))
    return f"Answering it takes {reason}. Difficulty: {score}"


def _reasoning(question: Question, letter: str, seen: Mapping[str, Any], rng: random.Random,
               style: str = "reasoning") -> str:
    """A short chain of thought reaching option `letter`, citing the findings / lesion that lead there.

    When the option is what the question shows, the findings are cited as read; otherwise the reasoning
    misreads them (another finding, another lesion colour), as a wrong teacher trace does. The last words
    name the diagnosis and cite its option ("..., option C."), as teachers often do: the answer line's
    letter then copies a letter just written instead of recalling which letter each name has.
    """
    diagnosis = question.options[letter]
    if "stated" in seen:
        text = f"The referral says {diagnosis}"
    elif seen.get("scored"):
        text = _scored_reasoning(seen["findings"], diagnosis, rng, style)
    else:
        text = _diagnosis_reasoning(question, diagnosis, seen, rng)
    return f"{text}, option {letter}."


def _scored_reasoning(findings: Sequence[str], diagnosis: str, rng: random.Random, style: str) -> str:
    """The sum of a scored question's points reaching `diagnosis` (no final period). A wrong diagnosis comes
    from misreading the last finding's points, so every step but that one is right."""
    target = TEXT_DISEASES.index(diagnosis)
    points = [FINDING_POINTS[f] for f in findings]
    points[-1] = (target - sum(points[:-1])) % len(TEXT_DISEASES)
    if style == "brief":
        return _SCORED_BRIEF[rng.randrange(len(_SCORED_BRIEF))].format(t=target, d=diagnosis)
    total, text = points[0], f"{_cap(findings[0])} {points[0]}"
    for finding, p in zip(findings[1:], points[1:], strict=True):
        total = (total + p) % len(TEXT_DISEASES)
        text += _SCORED_NEXT[rng.randrange(len(_SCORED_NEXT))].format(f=finding, p=p, t=total)
    return f"{text}. {_SCORED_END[rng.randrange(len(_SCORED_END))].format(t=total, d=diagnosis)}"


def _diagnosis_reasoning(question: Question, diagnosis: str, seen: Mapping[str, Any], rng: random.Random) -> str:
    """The reasoning up to the diagnosis it reaches (no final period)."""
    template = rng.randrange(len(_TEXT_REASONING))
    if question.category == "text":
        key = FINDINGS[TEXT_DISEASES.index(diagnosis)]  # a wrong trace misreads the key finding
        common = next((f for f in seen["findings"] if f in COMMON_FINDINGS), COMMON_FINDINGS[0])
        text = _TEXT_REASONING[template].format(fa=key, fb=common, Fa=_cap(key), d=diagnosis)
    elif question.category == "mm_classification":
        colour = LESION_COLOURS[LESIONS.index(diagnosis)]
        text = _CLASS_REASONING[template].format(
            colour=colour, Colour=_cap(colour), lesion=diagnosis, a=_article(diagnosis)
        )
    else:
        pairs = mm_presentations(diagnosis)
        actual = (seen.get("lesion"), (seen["findings"] or [None])[0])
        lesion, finding = actual if actual in pairs else pairs[rng.randrange(len(pairs))]
        colour = LESION_COLOURS[LESIONS.index(lesion)]
        text = _MM_REASONING[template].format(
            colour=colour, Colour=_cap(colour), lesion=lesion, a=_article(lesion), finding=finding,
            form=MM_FORMS[MM_FINDINGS.index(finding)], d=diagnosis,
        )
    return text.rstrip(".")


class DemoTeacher:
    """A synthetic teacher for the demo world, behind the `teachers.Teacher` protocol.

    For each sample it solves the question from its text and pixels, then, with probability
    `error_rate`, commits to a wrong option instead (its reasoning then misreads the findings or the
    lesion, as a real teacher's wrong trace does), and with probability `truncation_rate` stops inside
    its reasoning (no answer). Its phrasing varies between samples, so several accepted traces of one
    question are distinct. Everything is a function of (seed, question key, sample index). In the "judge"
    style it rates the question's difficulty instead (`judge_difficulty`, misjudged at `error_rate`): the
    judge filter's endpoint.

    Settings come from the recipe's teacher entry; `extra_body` holds `error_rate`, `truncation_rate`
    and `seed` (what a real endpoint would receive as extra sampling parameters).
    """

    def __init__(self, config: TeacherConfig, *, image_root: str | None = None, message_builder: Any = None):
        del image_root, message_builder  # questions carry their image bytes; the prompt is the question
        extra = dict(config.extra_body)
        self.name = config.name
        self.prompt_version = config.prompt_version
        self.max_n_per_request = max(1, int(config.max_n_per_request))
        self.price_input_per_1m = float(config.price_input_per_1m)
        self.price_output_per_1m = float(config.price_output_per_1m)
        self.error_rate = float(extra.get("error_rate", 0.35))
        self.truncation_rate = float(extra.get("truncation_rate", 0.05))
        self.seed = int(extra.get("seed", 0))
        self.style = str(extra.get("style", "reasoning"))
        if self.style not in STYLES:
            raise ValueError(f"demo teacher {self.name!r}: style {self.style!r} is not one of {STYLES}")
        self._last_read: tuple[str, Mapping[str, Any]] | None = None
        if not 0.0 <= self.error_rate <= 1.0 or not 0.0 <= self.truncation_rate <= 1.0:
            raise ValueError(f"demo teacher {self.name!r}: error_rate and truncation_rate must be in [0, 1]")

    def respond(self, question: Question, sample_index: int) -> str:
        """The response text of one sample (`<think>` reasoning, then the answer line)."""
        rng = random.Random(stable_hash("demo-teacher", self.seed, question.key, sample_index))
        seen = self._read(question)
        if self.style == "judge":
            return _judge_reply(question, seen, rng, self.error_rate)
        truth = solve(question, seen)
        letters = [k for k, v in question.options.items() if v == truth]
        letter = letters[0] if letters else rng.choice(list(question.options))
        stated = "stated" in seen  # the stem gives the answer: never wrong, nothing long enough to cut off
        if not stated and rng.random() < self.error_rate:
            letter = rng.choice([k for k in question.options if k != letter])
        reasoning = _reasoning(question, letter, seen, rng, self.style)
        if not stated and rng.random() < self.truncation_rate:
            return f"<think>\n{reasoning.rsplit(' ', 2)[0]}"  # cut off before the answer
        return formats.format_response(
            style=formats.COT, letter=letter, option_text=question.options[letter], reasoning=reasoning
        )

    def _read(self, question: Question) -> Mapping[str, Any]:
        """`read_question`, kept for the last question read: its samples are drawn one after another."""
        last = self._last_read  # a local: other threads may replace it meanwhile
        if last is None or last[0] != question.key:
            last = self._last_read = (question.key, read_question(question))
        return last[1]

    def sample(self, question: Question, sample_indices: Sequence[int]) -> list[Completion]:
        """One completion per requested sample index."""
        out = []
        for i in sample_indices:
            text = self.respond(question, i)
            out.append(
                Completion(
                    question_key=question.key,
                    teacher=self.name,
                    prompt_version=self.prompt_version,
                    sample_index=int(i),
                    content=text,
                    finish_reason="stop" if "</think>" in text or self.style == "judge" else "length",
                    prompt_tokens=len(formats.render_question(question).split()),  # a word count as a proxy
                    completion_tokens=len(text.split()),
                )
            )
        return out


TEACHER_KIND = "demo"
def teacher_settings(*, error_rate: float = 0.35, truncation_rate: float = 0.05, seed: int = 0, n: int = 8,
                     style: str = "reasoning") -> dict:
    """A recipe teacher entry for the demo teacher (kind `TEACHER_KIND`); `style` is one of `STYLES`."""
    extra = {"error_rate": error_rate, "truncation_rate": truncation_rate, "seed": seed}
    version = f"demo-v3-e{error_rate:g}-t{truncation_rate:g}-s{seed}"
    if style != "reasoning":  # the reasoning style's entries (and their stored completions) stay as they were
        extra["style"], version = style, f"{version}-{style}"
    return dict(
        kind=TEACHER_KIND,
        name="demo-teacher",
        base_url="",
        model="demo-world",
        api_key_env="",
        prompt_version=version,
        system_prompt="",
        n=n,
        max_n_per_request=n,
        temperature=1.0,
        top_p=1.0,
        max_tokens=256,
        price_input_per_1m=0.0,
        price_output_per_1m=0.0,
        extra_body=extra,
    )


def option_counts() -> Mapping[str, int]:
    """Options per category (chance accuracy is 1 / options)."""
    return {"text": len(TEXT_DISEASES), "mm_reasoning": len(MM_DISEASES), "mm_classification": len(LESIONS)}
