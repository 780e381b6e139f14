"""The paper's evaluation protocol: its category means from its per-benchmark scores, MedQA's majority vote in
the text mean, the 10-image cap, the CLI defaults, and the Table 2 layout (hand-made scores, no model)."""

import inspect
import statistics

import pytest
from absl import flags

from data_pipeline.records import ImageRef, Question
from octomed_jax import evaluate
from octomed_jax.evaluation import QuestionResult, Response, benchmark_metrics, markdown_table, summarize
from octomed_jax.evaluation.protocol import (
    PAPER,
    PAPER_CATEGORY_MEANS,
    PAPER_TABLE,
    QUICK,
    cap_images,
    parse_majority,
)
from octomed_jax.evaluation.report import table_json
from octomed_jax.evaluation.suite import evaluate_benchmarks
from octomed_jax.generation import SamplingParams


def resp(answer):
    return Response(text=f"The answer is {answer}", num_tokens=5, answer=answer)


def test_the_papers_scores_give_its_category_means():
    # All three reported means follow from the reported scores, MedQA entering with its majority-vote 90.81.
    per = {n: {"score": p.score} for n, p in PAPER_TABLE.items()}
    cats = {n: p.category for n, p in PAPER_TABLE.items()}
    means = summarize(per, cats)["categories"]
    assert {c: m["accuracy"] for c, m in means.items()} == {"text": 67.826, "mm_reasoning": 50.36,
                                                            "mm_classification": 67.286}
    assert {c: round(m["accuracy"], 2) for c, m in means.items()} == PAPER_CATEGORY_MEANS
    assert [means[c]["benchmarks"] for c in PAPER_CATEGORY_MEANS] == [
        ["medqa", "headqa", "medmcqa", "medxpertqa_text", "mmlu_pro_health"],
        ["mmmu_pro_health", "nejm", "pmc_vqa", "medxpertqa_mm"],
        ["brain_tumor", "coronahack", "aptos", "messidor2", "bcss"],
    ]


def test_medqa_majority_vote_is_its_score_and_enters_the_text_mean():
    # 2 questions x 2 seeds x 10 samples. Seed 0: q1 6 A / 4 B (majority A, right), q2 4 B / 3 C / 3 D (majority
    # B, right) -> 100; seed 1: q1 all A (right), q2 all C (wrong) -> 50. Per-sample accuracy: 50 in both seeds.
    medqa = [
        QuestionResult("q1", "A", [[resp("A")] * 6 + [resp("B")] * 4, [resp("A")] * 10]),
        QuestionResult("q2", "B", [[resp("B")] * 4 + [resp("C")] * 3 + [resp("D")] * 3, [resp("C")] * 10]),
    ]
    m = benchmark_metrics(medqa, majority=10)
    assert (m["accuracy"], m["accuracy_std"]) == (50.0, 0.0)
    assert (m["score"], m["score_per_seed"], m["majority"]) == (75.0, [100.0, 50.0], 10)
    assert m["score_std"] == round(statistics.stdev([100.0, 50.0]), 4) == 35.3553
    headqa = benchmark_metrics([QuestionResult("h", "A", [[resp("A")], [resp("A")]]),
                                QuestionResult("i", "B", [[resp("A")], [resp("C")]])])
    assert (headqa["score"], headqa["majority"]) == (headqa["accuracy"], None) == (50.0, None)
    per = {"medqa": m, "headqa": headqa}
    summary = summarize(per, {"medqa": "text", "headqa": "text"})
    assert summary["categories"]["text"]["accuracy"] == (75.0 + 50.0) / 2  # not (50 + 50) / 2
    table = markdown_table({"run": {"benchmarks": per, "categories": {"medqa": "text", "headqa": "text"},
                                    "summary": summary}})
    assert "| run | 75.00 ± 35.36† | 50.00 ± 0.00 | **62.50** | **62.50** |" in table
    assert "† MedQA: majority vote of 10 samples per question and seed, as the paper reports it." in table
    with pytest.raises(ValueError, match="fewer than 10 samples"):
        benchmark_metrics([QuestionResult("q", "A", [[resp("A")] * 9])], majority=10)


def question(qid, num_images):
    images = tuple(ImageRef(data=bytes([i]), format="png") for i in range(num_images))
    return Question(qid, "nejm", "mm_reasoning", "Which?", {"A": "x", "B": "y"}, "A", images, split="test")


def test_image_cap_keeps_the_first_10_and_counts_the_questions_cut():
    qs = [question("many", 12), question("ten", 10), question("none", 0)]
    kept, capped = cap_images(qs, PAPER.max_images)
    assert capped == ["many"]
    assert [len(q.images) for q in kept] == [10, 10, 0]
    assert kept[0].images == qs[0].images[:10] and kept[1] is qs[1]
    assert cap_images(qs, None) == (qs, [])


def parse(*args):
    fv = flags.FlagValues()
    evaluate.define_flags(fv)
    fv(["evaluate", "--checkpoint=ckpt", *args])
    return evaluate.protocol_from_flags(fv)


def test_cli_and_library_defaults_are_the_papers_protocol():
    assert parse() == PAPER
    assert inspect.signature(evaluate_benchmarks).parameters["protocol"].default is PAPER
    assert PAPER.seeds == (0, 1, 2, 3, 4) and PAPER.max_images == 10
    assert (PAPER.params.temperature, PAPER.params.top_p, PAPER.params.max_new_tokens) == (0.6, 0.95, 8192)
    assert PAPER.sampling("medqa") == (SamplingParams(temperature=0.6, top_p=0.95, max_new_tokens=8192, n=10), 10)
    assert PAPER.sampling("headqa") == (PAPER.params, None) and PAPER.params.n == 1
    # Each flag overrides its protocol value.
    assert parse("--protocol=quick") == QUICK
    got = parse("--seeds=3,4", "--majority=", "--max_images=0", "--temperature=0", "--max_new_tokens=64", "--n=2")
    assert got == PAPER.override(params=SamplingParams(temperature=0.0, top_p=0.95, max_new_tokens=64, n=2),
                                 seeds=(3, 4), majority={}, max_images=0)
    assert (got.majority, got.max_images, got.seeds) == ({}, None, (3, 4))
    assert parse("--majority=medqa=5,nejm=3").majority == {"medqa": 5, "nejm": 3}
    with pytest.raises(ValueError, match="'medqa' is not benchmark=k"):
        parse_majority(["medqa"])


def score(value, majority=None):
    return {"score": value, "score_std": 0.5, "num_seeds": 5, "majority": majority, "images_capped": 0}


def test_table_2_layout_with_the_papers_row():
    # Benchmarks given out of order; the table puts them in the paper's order, under the paper's names.
    names = list(reversed(PAPER_TABLE))
    per = {n: score(PAPER_TABLE[n].score, PAPER.majority.get(n)) for n in names}
    cats = {n: PAPER_TABLE[n].category for n in names}
    per["nejm"]["images_capped"] = 3
    metrics = {"benchmarks": per, "categories": cats, "summary": summarize(per, cats)}
    table = markdown_table({"ours": metrics}, paper=True)
    header = next(line for line in table.splitlines() if line.startswith("| Model"))
    assert header == (
        "| Model | MedQA | HeadQA | MedMCQA | MedXpertQA-Text | MMLU-Pro (Health) | Text avg | MMMU-Pro (Health) | "
        "NEJM Image Challenge | PMC-VQA | MedXpertQA-MM | MM reasoning avg | Brain Tumor | CoronaHack | APTOS | "
        "MESSIDOR-2 | BCSS | MM classification avg | Overall |"
    )
    assert ("| OctoMed-7B (paper) | 90.81† | 82.36 | 72.70 | 24.51 | 68.75 | **67.83** | 42.52 | 61.14 | 61.13 | "
            "36.65 | **50.36** | 80.86 | 71.22 | 75.43 | 55.20 | 53.72 | **67.29** | **62.64** |") in table
    assert "| ours | 90.81 ± 0.50† | 82.36 ± 0.50 |" in table
    assert "ours: questions cut to their first images (the image cap): NEJM Image Challenge 3." in table
    assert "of 5" not in table  # every category complete
    data = table_json({"ours": metrics}, paper=True)
    assert [c["category"] for c in data["columns"]] == list(PAPER_CATEGORY_MEANS)
    assert [r["run"] for r in data["rows"]] == ["ours", "OctoMed-7B (paper)"]
    assert data["rows"][1]["categories"] == {"text": 67.826, "mm_reasoning": 50.36, "mm_classification": 67.286}
    assert data["rows"][0]["benchmarks"]["medqa"] == {"score": 90.81, "std": 0.5, "num_seeds": 5, "majority": 10,
                                                      "images_capped": 0}


def test_paper_row_over_a_subset_averages_the_same_benchmarks():
    per = {"pmc_vqa": score(60.0), "medqa": score(80.0, 10)}
    cats = {"pmc_vqa": "mm_reasoning", "medqa": "text"}
    table = markdown_table({"ours": {"benchmarks": per, "categories": cats, "summary": summarize(per, cats)}},
                           paper=True)
    assert "| OctoMed-7B (paper) | 90.81† | **90.81** | 61.13 | **61.13** | **75.97** |" in table
    assert ("Category means over the benchmarks present (the paper's over all): Text 1 of 5, "
            "MM reasoning 1 of 4.") in table
