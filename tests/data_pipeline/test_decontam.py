"""Decontamination against benchmarks and deduplication within training, with real images."""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import imgutil  # noqa: E402

from data_pipeline import images as imglib  # noqa: E402
from data_pipeline.decontam import (  # noqa: E402
    BenchmarkIndex,
    DecontamConfig,
    Decontaminator,
    Deduplicator,
    ngram_hashes,
)
from data_pipeline.records import ImageRef, Question  # noqa: E402

BENCH_STEM = (
    "A 54-year-old man presents to the emergency department with sudden severe tearing chest pain radiating "
    "to the back and a blood pressure difference between both arms. Which of the following is the most "
    "likely diagnosis?"
)
OPTS = {"A": "Myocardial infarction", "B": "Aortic dissection", "C": "Pericarditis", "D": "Pneumothorax"}


def q(qid: str, stem: str, options=None, images=(), source="train_src") -> Question:
    return Question(
        id=qid,
        source=source,
        category="mm_reasoning" if images else "text",
        question=stem,
        options=dict(options or OPTS),
        answer="A",
        images=tuple(ImageRef(data=d, format="png") for d in images),
    )


def test_ngram_normalisation_and_short_texts():
    assert ngram_hashes("One, two; THREE!", 16) == ngram_hashes("one two three", 16)
    words = " ".join(f"w{i}" for i in range(20))
    assert len(ngram_hashes(words, 16)) == 5
    assert ngram_hashes("", 16) == set()


def test_reworded_question_sharing_a_16gram_is_dropped_other_is_kept():
    dec = Decontaminator([q("b1", BENCH_STEM, source="medqa_test")])
    # Reworded opening and ending, but the middle keeps >= 16 consecutive words (punctuation/case changed).
    shares = q(
        "t1",
        "An older man arrives at the ER: SUDDEN severe tearing chest pain, radiating to the back and a blood "
        "pressure difference between both arms! What should be suspected first?",
        options={"A": "x", "B": "y"},
    )
    # Same topic, no 16 consecutive shared words.
    paraphrase = q(
        "t2",
        "A man in his fifties has abrupt ripping thoracic pain that moves to his back, and his arm pressures "
        "differ. What is the likely cause?",
        options={"A": "x", "B": "y"},
    )
    kept = [x.id for x in dec.filter([shares, paraphrase])]
    assert kept == ["t2"]
    assert dec.counts == {"benchmark_ngram": 1}
    # The shared run is 17 words: with 18-grams the same question is kept.
    assert Decontaminator([q("b1", BENCH_STEM)], DecontamConfig(ngram=18)).reason(shares) is None


def test_options_count_towards_ngrams_only_when_enabled():
    long_option = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
    bench = q("b", "Short stem?", options={"A": long_option, "B": "no"})
    train = q("t", "A different stem entirely?", options={"A": long_option, "B": "maybe"})
    assert Decontaminator([bench]).reason(train) == "benchmark_ngram"
    cfg = DecontamConfig(include_options=False)
    assert Decontaminator([bench], cfg).reason(train) is None


def test_same_pixels_reencoded_png_to_bmp_is_an_exact_image_match():
    arr = imgutil.pattern(40, 40, seed=3)
    bench_png = imgutil.encode(arr, "PNG")
    train_bmp = imgutil.encode(arr, "BMP")
    assert bench_png != train_bmp  # different bytes: a byte hash would miss this
    assert imglib.pixel_hash(bench_png) == imglib.pixel_hash(train_bmp)
    dec = Decontaminator([q("b", "Bench image question?", images=[bench_png])])
    other = imgutil.png(seed=50, h=40, w=40)
    kept = [x.id for x in dec.filter([q("t1", "Unrelated?", images=[train_bmp]), q("t2", "Other?", images=[other])])]
    assert kept == ["t2"] and dec.counts == {"benchmark_image_exact": 1}


def test_brightened_image_is_a_perceptual_near_duplicate():
    arr = imgutil.pattern(64, 64, seed=5)
    bench = imgutil.encode(arr, "PNG")
    brighter = imgutil.encode(np.clip(arr.astype(np.int16) + 12, 0, 255).astype(np.uint8), "PNG")
    assert imglib.pixel_hash(bench) != imglib.pixel_hash(brighter)
    assert imglib.hamming(imglib.dhash(bench), imglib.dhash(brighter)) <= 6
    unrelated = imgutil.png(seed=77, h=64, w=64)
    assert imglib.hamming(imglib.dhash(bench), imglib.dhash(unrelated)) > 10
    dec = Decontaminator([q("b", "Bench?", images=[bench])], DecontamConfig(image_hamming=6))
    assert dec.reason(q("t1", "Train?", images=[brighter])) == "benchmark_image_near"
    assert dec.reason(q("t2", "Train?", images=[unrelated])) is None
    # The perceptual check is an extra, off by default: the brightened copy is kept.
    assert Decontaminator([q("b", "Bench?", images=[bench])]).reason(q("t3", "Train?", images=[brighter])) is None


def test_exact_duplicates_within_training():
    dec = Decontaminator()
    a = q("1", "What is the first-line treatment of anaphylaxis?")
    same = q("2", "  what is the FIRST-LINE treatment of anaphylaxis  ", options=dict(reversed(list(OPTS.items()))))
    other_options = q("3", "What is the first-line treatment of anaphylaxis?", options={"A": "Epinephrine", "B": "x"})
    kept = [x.id for x in dec.filter([a, same, other_options])]
    assert kept == ["1", "3"] and dec.counts == {"duplicate_exact": 1}


def test_same_stem_different_images_is_not_a_duplicate():
    dec = Decontaminator()
    stem = "Which of the following best describes this image?"
    qs = [q(str(i), stem, images=[imgutil.png(seed=i, h=24, w=24)]) for i in range(4)]
    qs.append(q("dup", stem, images=[imgutil.encode(imgutil.pattern(24, 24, seed=0), "BMP")]))  # same pixels as 0
    assert [x.id for x in dec.filter(qs)] == ["0", "1", "2", "3"]
    assert dec.counts == {"duplicate_exact": 1}


def test_near_duplicates_within_training():
    base = (
        "A 25-year-old woman presents with fatigue, pallor and koilonychia after months of heavy menstrual "
        "bleeding; her ferritin is low and the blood smear shows microcytic hypochromic red cells. What is "
        "the most appropriate initial treatment for this patient?"
    )
    near = base.replace("25-year-old", "26-year-old")  # one token differs
    different = (
        "A 70-year-old man has progressive memory loss over three years with preserved gait and continence and "
        "no focal deficits on examination. Which medication class is most appropriate to start first?"
    )
    dd = Deduplicator(DecontamConfig(near_jaccard=0.8))
    assert dd.check(q("1", base), []) is None
    assert dd.check(q("2", near), []) == "duplicate_near"
    assert dd.check(q("3", different), []) is None
    # The same near-duplicate text over a different image is a different question.
    assert dd.check(q("4", near), ["imagekey"]) is None
    # Off by default (an extra beyond the paper).
    off = Deduplicator(DecontamConfig())
    assert off.check(q("1", base), []) is None and off.check(q("2", near), []) is None


def test_benchmark_index_is_reusable_and_counts():
    idx = BenchmarkIndex().add_all([q("b1", BENCH_STEM), q("b2", "Another benchmark question here?")])
    assert idx.num_questions == 2
    assert idx.ngram_match(q("t", "Another benchmark question here?")) == "train_src"  # short text: compared whole
    assert idx.ngram_match(q("t", "Another benchmark question here and more?", options={"A": "p", "B": "q"})) is None
    assert idx.nearest_image(0) is None


def test_path_only_images_are_counted_unchecked_not_dropped():
    dec = Decontaminator()
    ref_q = Question(
        id="p", source="s", category="mm_reasoning", question="Q?", options={"A": "x", "B": "y"}, answer="A",
        images=(ImageRef(path="a.png", format="png"),),
    )  # fmt: skip
    assert list(dec.filter([ref_q])) == [ref_q]
    assert dec.stats["image_unchecked"] == 1 and not dec.counts
