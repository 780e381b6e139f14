"""The paper's experiments in miniature (`octomed_demo.experiments`, issue 19): each arm is the real ablation config
but for the documented scale fields; the report names every experiment of docs/experiments.md and judges each
finding's direction right; a 2-arm suite of 2 steps runs end to end, and its rerun skips the finished arms."""

import json
import os
import re
import subprocess
import sys

import pytest
from absl import flags

from configs import base
from configs.experiments import EXPERIMENTS, flatten
from octomed_demo import experiments as ex

pytestmark = pytest.mark.slow(seconds=150)  # the end-to-end suite; xdist starts it early (conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARMS = [(e, a) for e, exp in EXPERIMENTS.items() for a in exp.arms]


def scaled(prefixes, config):
    """The config's dotted fields under (True) and outside (False) the `SCALE_FIELDS` prefixes."""
    flat = flatten(config)
    inside = {k: v for k, v in flat.items() if any(k == p or k.startswith(p + ".") for p in prefixes)}
    return inside, {k: v for k, v in flat.items() if k not in inside}


@pytest.fixture(scope="module")
def scale():
    return ex.suite_scale(ex.load_config("demo"), quick=False)


@pytest.mark.parametrize("exp,arm", ARMS)
def test_arm_is_the_real_config_but_for_the_scale_fields(exp, arm, scale):
    config = ex.arm_config(exp, arm, scale)
    real = ex.load_config(arm)
    got_scale, got_rest = scaled(ex.SCALE_FIELDS, config)
    want_rest = scaled(ex.SCALE_FIELDS, real)[1]
    if exp in ex.EARLY_EXPERIMENTS:  # eval is a scale field; the mid-training point is the suite's
        assert config.eval.every == scale.train.num_steps // 2 == ex.PAPER_STEPS // 2
        config.eval.every = scale.eval.every
    if exp in ex.EPOCH_EXPERIMENTS:  # exact epochs to the paper's point, evaluated at each end, on a larger world
        assert (config.train.num_steps, config.data.epochs, config.eval.at_epoch_ends) == (
            -1, ex.PAPER_EPOCHS[arm], real.eval.at_epoch_ends)
        assert real.eval.at_epoch_ends and real.data.epochs == 3 >= ex.PAPER_EPOCHS[arm]
        assert config.recipe.sources.demo_text.options.num_train == 5 * scale.recipe.sources.demo_text.options.num_train
        quick = ex.arm_config(exp, arm, scale, by_epochs=False)  # --quick: the scale's fixed steps
        assert (quick.train.num_steps, quick.data.epochs) == (scale.train.num_steps, scale.data.epochs)
        config = quick
    assert got_rest == want_rest  # the lever and every other recipe field: the real arm's
    for key in ("init_from", "model", "mesh", "rules", "data", "optim", "train", "checkpoint", "eval", "export",
                "demo", "plugins"):
        assert flatten(config[key], key) == flatten(scale[key], key), key
    categories = {ex.SOURCE_CATEGORY[s] for s in real.recipe.sources}
    assert sorted(config.recipe.sources) == sorted(f"demo_{c}" for c in categories)
    assert all(config.recipe.sources[s] == scale.recipe.sources[s] for s in config.recipe.sources)
    styles = {c: (t.name, t.extra_body.error_rate, t.n, t.extra_body.get("style", "reasoning"))
              for c, t in config.recipe.teachers.items()}
    r1, gpt4o = ("demo-reasoning", 0.2, 16, "reasoning"), ("demo-instruction", 0.6, 16, "brief")
    text = gpt4o if arm == "teacher_gpt4o" else r1
    assert styles == {"text": text, "mm_reasoning": ("demo-instruction", 0.35, 16, "brief"),
                      "mm_classification": ("demo-instruction", 0.35, 16, "brief")}
    student = config.recipe.filters.student_pass_rate.endpoint
    assert (student.kind, student.name, student.extra_body.error_rate, student.n) == ("demo", "demo-student", 0.7, 16)
    judge = config.recipe.filters.judge.endpoint
    assert (judge.kind, judge.name, judge.extra_body.style, judge.extra_body.error_rate, judge.n) == (
        "demo", "demo-judge", "judge", 0.1, 1)
    assert ex.missing_endpoints(config) == []
    assert all(k.startswith(ex.SCALE_FIELDS) for k in got_scale)


@pytest.mark.parametrize("exp", sorted(EXPERIMENTS))
def test_scaled_sibling_arms_still_differ_only_in_the_lever(exp, scale):
    arms = list(EXPERIMENTS[exp].arms)
    first = flatten(ex.arm_config(exp, arms[0], scale))
    for arm in arms[1:]:
        other = flatten(ex.arm_config(exp, arm, scale))
        changed = {k for k in first.keys() | other.keys() if first.get(k) != other.get(k)} - {"recipe.name"}
        if exp in ex.EPOCH_EXPERIMENTS and ex.PAPER_EPOCHS[arm] != ex.PAPER_EPOCHS[arms[0]]:
            changed -= {"data.epochs"}  # each arm read at the epoch the paper reports it at
        assert changed and all(k.startswith(EXPERIMENTS[exp].lever) for k in changed), (arm, sorted(changed))


def test_the_suite_world_has_too_easy_image_questions_and_scored_text_on_request(scale):
    demo = ex.load_config("demo")
    for key, entry in scale.recipe.sources.items():
        want = {"text": (0, None), "mm_reasoning": (None, 0.4)}.get(entry.options.category, (None, None))
        assert (entry.options.get("scored_findings"), entry.options.get("stated_fraction")) == want, key
        demo_options = demo.recipe.sources[key].options  # the demo's own world
        assert (demo_options.get("scored_findings", 0), demo_options.get("stated_fraction", 0.0)) == (0, 0.0)
    assert scale.eval.max_new_tokens == demo.eval.max_new_tokens
    scored = ex.load_config("demo")
    scored.recipe.sources.demo_text.options.scored_findings = 3  # the override for text that needs several steps
    scored = ex.suite_scale(scored, quick=False)
    assert scored.eval.max_new_tokens == ex.SCORED_MAX_NEW_TOKENS > demo.eval.max_new_tokens
    from octomed_demo import world

    (text,) = [q for q in world.held_out(ex.arm_config("format", "format_cot", scored).recipe, limit=1)
               if q.category == "text"]
    assert "finding score" in text.question


def test_quick_suite_and_only():
    assert ex.suite_arms(quick=True) == [("format", "format_cot"), ("format", "format_direct"),
                                         ("traces", "traces_1"), ("traces", "traces_16")]
    assert ex.suite_arms(quick=False, only=["teacher", "traces_4"]) == [("traces", "traces_4"),
                                                                        ("teacher", "teacher_r1"),
                                                                        ("teacher", "teacher_gpt4o")]
    with pytest.raises(ex.SuiteError, match="'nope'"):
        ex.suite_arms(quick=True, only=["nope"])
    s = ex.suite_scale(ex.load_config("demo"), quick=True)
    assert (s.train.num_steps, s.eval.max_questions, s.export.hf, s.demo.hf_check) == (200, 20, False, False)
    assert ex.suite_scale(ex.load_config("demo"), quick=False, steps=7).train.num_steps == 7


def test_a_workdir_keeps_its_scale_config(tmp_path):
    scale = ex.suite_scale(ex.load_config("demo"), quick=True)
    ex.check_workdir(scale, str(tmp_path))
    ex.check_workdir(ex.suite_scale(ex.load_config("demo"), quick=True), str(tmp_path))  # the same: accepted
    with pytest.raises(ex.SuiteError, match=r"differing fields: eval.max_questions, train.num_steps\."):
        ex.check_workdir(ex.suite_scale(ex.load_config("demo"), quick=False), str(tmp_path))


def test_cli_flags_are_defined_on_request_only():
    assert not [m for m in flags.FLAGS.flags_by_module_dict() if m.startswith("octomed_demo")]
    fv = flags.FlagValues()
    ex.define_flags(fv)
    assert sorted(fv) == ["only", "quick", "scale", "steps", "suite", "workdir"]
    assert (ex.scale_argument(["prog", "--quick"]), ex.scale_argument(["prog", "--scale=demo"])) == ("demo", "demo")


def fake_arm(exp, arm, text, mm, cls, early=None, epochs=None):
    cats = dict(zip(base.CATEGORIES, (text, mm, cls), strict=True))
    return {"experiment": exp, "arm": arm, "status": "done",
            "categories": {c: {"chance": 20.0, "before": 0.0, "after": v, "questions": 40, "unparseable_after": 0}
                           for c, v in cats.items()},
            "early": None if early is None else {"step": 7, "categories": {"mm_reasoning": early}},
            "epochs": None if epochs is None else [{"epoch": e, "step": 10 * e, "categories": {"text": a}}
                                                   for e, a in enumerate(epochs, start=1)]}


@pytest.fixture(scope="module")
def fake_arms():
    arms = {
        "format_cot": fake_arm("format", "format_cot", 60.0, 40.0, 50.0),
        "format_direct": fake_arm("format", "format_direct", 30.0, 37.5, 70.0),
        "traces_1": fake_arm("traces", "traces_1", 80.0, 0.0, 0.0, epochs=(20.0, 60.0, 80.0)),
        "traces_16": fake_arm("traces", "traces_16", 70.0, 0.0, 0.0),
        "filter_none": fake_arm("filter", "filter_none", 0.0, 50.0, 0.0, early=20.0),
        "filter_teacher_pass_rate": fake_arm("filter", "filter_teacher_pass_rate", 0.0, 30.0, 0.0, early=32.5),
        "filter_judge": {"experiment": "filter", "arm": "filter_judge", "status": "not run",
                         "reason": "the demo world has no stand-in for the judge endpoint"},
    }
    return arms


def claim(finding_start):
    return next(c for c in ex.CLAIMS if c.finding.startswith(finding_start))


def test_verdicts_on_fake_results(fake_arms):
    assert ex.judge_claim(claim("CoT lifts text"), fake_arms) == ("agrees", 30.0)
    assert ex.judge_claim(claim("CoT lifts multimodal"), fake_arms) == ("flat", 2.5)
    assert ex.judge_claim(claim("direct is slightly"), fake_arms) == ("agrees", 20.0)
    assert ex.judge_claim(claim("16 traces"), fake_arms) == ("inverted", -10.0)
    assert ex.judge_claim(claim("4 traces"), fake_arms) == ("not run", None)
    assert ex.judge_claim(claim("teacher_pass_rate makes"), fake_arms) == ("agrees", 12.5)  # early, not final
    assert ex.judge_claim(claim("unfiltered"), fake_arms) == ("not run", None)  # the judge arm did not run
    same = {**fake_arms, "filter_judge": fake_arm("filter", "filter_judge", 0.0, 46.0, 0.0)}
    assert ex.judge_claim(claim("unfiltered"), same) == ("agrees", 4.0)
    same["filter_judge"] = fake_arm("filter", "filter_judge", 0.0, 60.0, 0.0)
    assert ex.judge_claim(claim("unfiltered"), same) == ("differs", -10.0)


def test_report_lists_every_experiment_of_the_docs(fake_arms, tmp_path):
    with open(os.path.join(ROOT, "docs", "experiments.md")) as f:
        headings = [line for line in f if line.startswith("## ") and "`" in line]
    documented = [arms for arms in (re.findall(r"`(\w+)`", h) for h in headings) if arms]
    assert sorted(map(sorted, documented)) == sorted(sorted(e.arms) for e in EXPERIMENTS.values())
    md, png = ex.write_report(fake_arms, str(tmp_path), title="fake")
    text = open(md).read()
    for arms in documented:
        exp = next(e for e, x in EXPERIMENTS.items() if set(x.arms) == set(arms))
        assert f"\n## {exp}\n" in text
        for arm in arms:
            assert f"| `{arm}` | " in text
    assert "| `format_cot` | cot | 60.0 | 52.2 | 40.0 | 38.1 | 50.0 | 63.3 |" in text
    assert "| `filter_judge` | judge | not run | - | not run | - | not run | - |" in text
    assert ("At each epoch's end (step), text / mm_reasoning / mm_classification: `traces_1` epoch 1 (step 10) "
            "20.0 / - / -, epoch 2 (step 20) 60.0 / - / -, epoch 3 (step 30) 80.0 / - / -.") in text
    assert "`filter_judge`: the demo world has no stand-in for the judge endpoint" in text
    assert "| text | final | +30.0 | agrees |" in text and "| text | final | -10.0 | inverted |" in text
    assert f"The paper's {len(ex.CLAIMS)} findings here: 3 agrees, 1 flat, 1 inverted, " in text
    assert os.path.getsize(png) > 10_000


SHORT = [
    "--steps=2",
    "--config.eval.max_questions=2",
    "--config.eval.max_new_tokens=8",
    *(f"--config.recipe.sources.demo_{c}.options.num_train=16" for c in base.CATEGORIES),
    *(f"--config.recipe.sources.demo_{c}.options.num_test=2" for c in base.CATEGORIES),
]


def test_two_arm_suite_end_to_end_and_rerun_skips_finished_arms(child_env, tmp_path):
    env = child_env(JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # the real local devices, as the demo runs
    workdir = str(tmp_path / "suite")
    cmd = [sys.executable, "-m", "octomed_demo.experiments", "--suite=paper", "--scale=demo",
           f"--workdir={workdir}", "--only=traces_1,traces_4", *SHORT]

    def run():
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    out = run()
    # The traces arms train the paper's epochs (3 and 1), evaluated at each end, on 5 x 16 text questions.
    assert "[arm 1/2] traces_1 (traces): 3 epoch(s), evaluated at each end ..." in out
    assert "[arm 2/2] traces_4 (traces): 1 epoch(s), evaluated at each end ..." in out
    assert "[arm 2/2] traces_4 (traces): done in" in out
    assert re.search(r"experiments: total \d+s", out)
    reports = {}
    for arm, epochs in (("traces_1", 3), ("traces_4", 1)):
        with open(os.path.join(workdir, arm, ex.ARM_REPORT)) as f:
            reports[arm] = json.load(f)
        points = reports[arm]["epochs"]
        assert [p["epoch"] for p in points] == list(range(1, epochs + 1))
        assert points[-1]["step"] == reports[arm]["steps"]
        assert points[-1]["categories"] == {c: m["after"] for c, m in reports[arm]["categories"].items()}
        assert {c: m["questions"] for c, m in reports[arm]["categories"].items()} == {c: 2 for c in base.CATEGORIES}
    assert reports["traces_1"]["traces"]["questions_in"] == reports["traces_4"]["traces"]["questions_in"] == 5 * 16
    assert reports["traces_1"]["traces"]["traces_per_question"] == 1
    assert reports["traces_4"]["traces"]["traces_per_question"] == 4
    # the untrained student's evaluation is the first arm's, shared by the second
    shared = open(os.path.join(workdir, ex.BEFORE)).read()
    assert open(os.path.join(workdir, "traces_4", "demo_eval", "step_0.json")).read() == shared
    assert [{c: m["before"] for c, m in r["categories"].items()} for r in reports.values()] == [
        {c: reports["traces_1"]["categories"][c]["before"] for c in base.CATEGORIES}] * 2
    md = open(os.path.join(workdir, ex.REPORT + ".md")).read()
    out = run()
    assert "[arm 1/2] traces_1 (traces): finished earlier, skipped" in out
    assert "[arm 2/2] traces_4 (traces): finished earlier, skipped" in out
    assert open(os.path.join(workdir, ex.REPORT + ".md")).read() == md
