"""The paper's ablations (issue 12, item 2): each arm config against `configs.experiments.EXPERIMENTS`, and the
recipe-level question subset (`data_pipeline.subset`): exact N, proportional by source, class-stratified, the
same questions in every arm and every build job."""

from __future__ import annotations

import importlib
import itertools
import json
import os
import sys

import ml_collections
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "data_pipeline"))
from imgutil import png  # noqa: E402

from configs import experiments, full_mix  # noqa: E402
from configs.base import source  # noqa: E402
from configs.cli import known_configs  # noqa: E402
from data_pipeline.build import Recipe, run_build, select_subsets  # noqa: E402
from data_pipeline.hashing import shard_of  # noqa: E402
from data_pipeline.records import Question  # noqa: E402
from data_pipeline.sources import read_source  # noqa: E402
from data_pipeline.subset import SourcePool, class_shares, largest_remainder, select  # noqa: E402

ARMS = [(exp, arm) for exp, e in experiments.EXPERIMENTS.items() for arm in e.arms]
NOT_ABLATIONS = {"base", "full_mix", "full_mix_qwen3_vl", "full_mix_internvl", "demo"}  # final recipe, other students


def load(name: str) -> ml_collections.ConfigDict:
    return importlib.import_module(f"configs.{name}").get_config()


@pytest.fixture(scope="module")
def reference() -> dict:
    return experiments.flatten(full_mix.get_config())


def test_every_ablation_config_is_in_the_table():
    assert sorted(a for _, a in ARMS) == sorted(set(known_configs()) - NOT_ABLATIONS)


@pytest.mark.parametrize("exp,arm", ARMS)
def test_arm_differs_from_full_mix_exactly_in_its_table_row(exp, arm, reference):
    config = load(arm)
    fields = experiments.EXPERIMENTS[exp].arms[arm]
    want = {k: v for k, v in {**reference, **experiments.arm_fields(fields)}.items() if k not in experiments.IGNORED}
    got = {k: v for k, v in experiments.flatten(config).items() if k not in experiments.IGNORED}
    assert got == want
    changed = experiments.diff(config, full_mix.get_config())
    for path in fields:  # every field the row names is a change, not a restatement of full_mix
        assert any(k == path or k.startswith(path + ".") for k in changed), path
    assert (config.recipe.name, config.recipe.out_dir) == (arm, f"data/recipes/{arm}")
    mix = full_mix.all_sources()
    assert all(config.recipe.sources[s] == mix[s] for s in config.recipe.sources)  # entries are full_mix's


def test_ablation_training_is_the_papers():
    assert experiments.ABLATION_TRAINING == {"train.global_batch_rows": 16, "optim.warmup_ratio": 0.01}
    assert experiments.ABLATION_BATCH_ROWS * 8 == 128  # ~8 examples of ~1,000 tokens per 8192-token row
    assert full_mix.get_config().data.seq_len == 8192


@pytest.mark.parametrize("exp", sorted(experiments.EXPERIMENTS))
def test_sibling_arms_differ_only_in_the_lever(exp):
    e = experiments.EXPERIMENTS[exp]
    for a, b in itertools.combinations(e.arms, 2):
        changed = experiments.diff(load(a), load(b))
        assert changed, (a, b)
        assert all(any(k == p or k.startswith(p + ".") for p in e.lever) for k in changed), (a, b, sorted(changed))


def test_the_papers_settings_per_experiment():
    fmt, direct = load("format_cot"), load("format_direct")
    assert (fmt.recipe.subset.questions, fmt.recipe.traces_per_question) == (100_000, 1)
    assert dict(direct.recipe.response_format) == {"text": "direct", "mm_reasoning": "direct",
                                                   "mm_classification": "direct"}
    t1, t16 = load("traces_1"), load("traces_16")
    assert (list(t1.recipe.sources), t1.data.epochs, t1.eval.at_epoch_ends, t16.recipe.traces_per_question) == (
        ["medqa"], 3, True, 16)
    r1, g = load("teacher_r1"), load("teacher_gpt4o")
    assert (r1.recipe.subset.questions, r1.recipe.traces_per_question, r1.data.epochs) == (30_000, 1, 1)
    assert (r1.recipe.teachers.text.name, g.recipe.teachers.text.name) == ("deepseek-r1", "gpt-4o")
    assert sorted(r1.recipe.sources) == ["headqa", "medmcqa", "medqa"]
    assert list(load("filter_judge").recipe.sources) == ["pmc_vqa"]


# -- the subset ---------------------------------------------------------------------------------------------------


def test_largest_remainder_is_proportional_and_exact():
    assert largest_remainder({"a": 12, "b": 14}, 10) == {"a": 5, "b": 5}  # 4.62 -> 5, 5.38 -> 5
    assert largest_remainder({"a": 1, "b": 1, "c": 1}, 2) == {"a": 1, "b": 1, "c": 0}  # tie: name order
    assert largest_remainder({"a": 70, "b": 20, "c": 10}, 7) == {"a": 5, "b": 1, "c": 1}  # 4.9, 1.4, 0.7
    assert largest_remainder({"a": 3, "b": 4}, 50) == {"a": 3, "b": 4}  # N over the pool: everything


def test_class_shares_redistribute_what_small_classes_cannot_give():
    assert class_shares({"a": 1, "b": 3, "c": 10}, 9, seed=0) == {"a": 1, "b": 3, "c": 5}
    assert class_shares({"a": 1, "b": 3, "c": 10}, 5, seed=0) == {"a": 1, "b": 2, "c": 2}
    assert class_shares({"a": 5, "b": 5, "c": 5}, 9, seed=0) == {"a": 3, "b": 3, "c": 3}
    odd = class_shares({"a": 5, "b": 5, "c": 5}, 10, seed=0)
    assert sorted(odd.values()) == [3, 3, 4] and sum(odd.values()) == 10
    assert class_shares({"a": 2, "b": 2}, 9, seed=0) == {"a": 2, "b": 2}


def test_select_caps_first_then_samples_n_over_all_sources():
    pools = {"x": SourcePool({"": list(range(0, 40))}), "y": SourcePool({"p": list(range(100, 120)),
                                                                        "q": list(range(200, 202))})}
    got = select(pools, {"x": 20}, 11, seed=0)  # x capped to 20; then 11 of 20 + 22 -> 5.24, 5.76 -> 5, 6
    assert {s: len(v) for s, v in got.items()} == {"x": 5, "y": 6}
    assert got["x"].hashes == frozenset(range(5))  # lowest seeded hashes
    assert got["y"].hashes == frozenset({100, 101, 102, 103, 200, 201})  # class q (2) all, p the rest
    assert (got["x"].pool_size, got["y"].pool_size) == (40, 22)


CLASSES = {"alpha": 1, "beta": 3, "gamma": 10}
N_MEDQA = 12  # distinct questions (the file has one exact copy more)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> str:
    """A MedQA jsonl (12 questions + an exact copy) and an image-folder classification set (1 / 3 / 10)."""
    root = tmp_path_factory.mktemp("sources")
    os.makedirs(root / "medqa")
    opts = {"A": "aspirin", "B": "heparin", "C": "warfarin", "D": "alteplase", "E": "nothing"}
    rows = [{"question": f"Case {i}: which drug now?", "options": opts, "answer": "aspirin", "answer_idx": "A"}
            for i in range(N_MEDQA)]
    (root / "medqa" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows, rows[3]]))
    seed = 0
    for label, n in CLASSES.items():
        os.makedirs(root / "cls" / label)
        for i in range(n):
            seed += 1
            (root / "cls" / label / f"{i}.png").write_bytes(png(seed=seed, h=16, w=16))
    return str(root)


def fixture_config(name: str, root: str, questions: int, cls_cap: int = 0) -> ml_collections.ConfigDict:
    """An ablation arm's config on the fixture sources (decontamination off: no benchmark files), N=`questions`."""
    config = load(name)
    r = config.recipe
    r.source_root = root
    r.sources = ml_collections.ConfigDict(
        {"medqa": source("medqa", "medqa"), "cls": source("image_folder", "cls", name="cls", max_questions=cls_cap)}
    )
    r.subset.questions = questions
    r.decontamination.enabled = False
    for c in r.teachers:  # a closed local port, no key: a dry run calls nothing
        r.teachers[c].update(base_url="http://127.0.0.1:9/v1", api_key_env="")
    return config


def chosen(root: str, config: ml_collections.ConfigDict) -> dict[str, list[Question]]:
    """source -> the distinct questions of the fixture that the config's subset holds (no subset: all)."""
    subsets = select_subsets(Recipe.from_config(config), root, log=lambda s: None)
    out = {}
    for k, e in config.recipe.sources.items():
        qs = {q.key: q for q in read_source(e.adapter, os.path.join(root, e.path), **e.options.to_dict())
              if isinstance(q, Question)}
        out[k] = [q for key, q in sorted(qs.items()) if k not in subsets or key in subsets[k]]
    return out


def classes(questions: list[Question]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for q in questions:
        counts[q.options[q.answer]] = counts.get(q.options[q.answer], 0) + 1
    return counts


def test_subset_is_exact_proportional_stratified_and_the_same_in_every_arm(sources):
    cot = chosen(sources, fixture_config("format_cot", sources, 10))
    # 12 + 14 distinct questions; 10 -> 4.62 and 5.38 -> 5 and 5; classes 1 / 3 / 10 -> 1, 2, 2
    assert {k: len(v) for k, v in cot.items()} == {"medqa": 5, "cls": 5}
    assert classes(cot["cls"]) == {"alpha": 1, "beta": 2, "gamma": 2}
    other = fixture_config("format_direct", sources, 10)  # another format, K, filter and teacher: same questions
    other.recipe.traces_per_question = 4
    other.recipe.filters.judge.enabled = True
    other.recipe.teachers.text = load("teacher_gpt4o").recipe.teachers.text
    assert chosen(sources, other) == cot
    everything = chosen(sources, fixture_config("format_cot", sources, 10_000))  # N over the pool: all 26
    assert everything == chosen(sources, fixture_config("format_cot", sources, 0))
    assert {k: len(v) for k, v in everything.items()} == {"medqa": N_MEDQA, "cls": sum(CLASSES.values())}


def test_a_source_cap_is_class_stratified(sources):
    got = classes(chosen(sources, fixture_config("format_cot", sources, 0, cls_cap=6))["cls"])
    assert got == {"alpha": 1, "beta": 2, "gamma": 3}  # 1 + 5 shared as 2 + 2, the odd one to a seeded class
    flat = fixture_config("format_cot", sources, 0, cls_cap=6)
    flat.recipe.subset.stratify_classes = False
    assert sum(classes(chosen(sources, flat)["cls"]).values()) == 6


def test_sharded_jobs_keep_the_global_subset(sources, tmp_path):
    config = fixture_config("format_cot", sources, 10)
    want = chosen(sources, config)
    kept = {}
    for i in range(3):
        res = run_build(config, out_dir=str(tmp_path / f"job{i}"), dry_run=True, num_shards=3, shard_index=i,
                        progress=False, log=lambda s: None)
        for (src, cat), s in res.stats.by.items():
            if cat != "unparsed":
                kept[(src, i)] = (s.questions_kept, s.dropped.get("not_in_subset", 0))
    for src, qs in want.items():
        pool = {"medqa": N_MEDQA, "cls": sum(CLASSES.values())}[src]
        per_job = [sum(shard_of(q.key, 3) == i for q in qs) for i in range(3)]
        assert [kept.get((src, i), (0, 0))[0] for i in range(3)] == per_job
        assert sum(kept.get((src, i), (0, 0))[1] for i in range(3)) == pool - len(qs)
    assert sum(v[0] for v in kept.values()) == 10 and all(v[0] < 5 for v in kept.values())  # split over jobs
