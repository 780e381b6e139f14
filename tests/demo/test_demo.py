"""A shortened demo end to end, through the real command (`python -m octomed_demo`): build, eval, train, eval,
HF export, transformers reload, report, library logs in a file; then a run into a fresh workdir, interrupted
(SIGTERM) mid-training and rerun, resumes and gives the same report figures."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow(seconds=300)  # about its CI time: xdist starts it early (conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHORT = [
    "--config.recipe.sources.demo_text.options.num_train=16",
    "--config.recipe.sources.demo_mm_reasoning.options.num_train=16",
    "--config.recipe.sources.demo_mm_classification.options.num_train=16",
    "--config.recipe.sources.demo_text.options.num_test=3",
    "--config.recipe.sources.demo_mm_reasoning.options.num_test=3",
    "--config.recipe.sources.demo_mm_classification.options.num_test=3",
    "--config.train.num_steps=5",
    "--config.eval.max_new_tokens=16",
]


def demo_command(workdir, *extra):
    return [sys.executable, "-m", "octomed_demo", f"--workdir={workdir}", *SHORT, *extra]  # --config=demo by default


@pytest.fixture(scope="module")
def demo_env(child_env):
    """The demo's environment: the real local devices (no fake device count), the session's compile cache."""
    env = child_env(JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return env


def run_demo(workdir, env, *extra):
    proc = subprocess.run(demo_command(workdir, *extra), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(os.path.join(workdir, "demo_report.json")) as f:
        return json.load(f), proc.stdout + proc.stderr


def trained_steps(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return max((json.loads(line)["step"] for line in f if '"kind": "train"' in line), default=0)


def interrupt_demo(workdir, env, *extra, step=2, timeout=600):
    """Runs the demo in `env` and sends SIGTERM once `step` training steps are logged; returns the console output."""
    proc = subprocess.Popen(demo_command(workdir, *extra), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and trained_steps(workdir) < step:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]  # the trainer saved and exited cleanly
    return out


@pytest.fixture(scope="module")
def first(demo_env, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("demo") / "run")
    report, stdout = run_demo(workdir, demo_env)
    return workdir, report, stdout


def test_report_has_every_field_and_is_printed(first):
    workdir, report, stdout = first
    from octomed_demo.driver import REPORT_FIELDS

    assert set(REPORT_FIELDS) <= set(report)
    assert set(report["categories"]) == {"text", "mm_reasoning", "mm_classification"}
    chance = {"text": 20.0, "mm_reasoning": 12.5, "mm_classification": 25.0}  # 5, 8 and 4 options
    for category, m in report["categories"].items():
        assert m["chance"] == chance[category] and m["questions"] == 3
        assert 0.0 <= m["before"] <= 100.0 and 0.0 <= m["after"] <= 100.0
    assert report["steps"] == 5 and sorted(report["losses"], key=int) == ["1", "2", "3", "4", "5"]
    assert report["tokens_trained"] > 0
    assert os.path.getsize(os.path.join(workdir, "demo_report.png")) > 10_000
    assert "=== OctoMed-JAX demo" in stdout and "traces accepted" in stdout
    assert set(report["timings_s"]) == {"build", "eval_before", "train", "eval_after", "export", "total"}


def test_each_evaluation_keeps_the_students_responses(first):
    workdir, report, _ = first
    for step, when in ((0, "before"), (5, "after")):
        for category, m in report["categories"].items():
            path = os.path.join(workdir, "demo_eval", f"step_{step}.demo_{category}.responses.jsonl")
            with open(path) as f:
                rows = [json.loads(line) for line in f]
            assert len(rows) == m["questions"]
            correct = sum(r["responses"][0][0]["answer"] == r["answer"] for r in rows)  # greedy: one response
            assert 100.0 * correct / len(rows) == pytest.approx(m[when]), (path, rows)


def test_console_shows_phases_and_library_logs_go_to_the_file(first):
    workdir, _, console = first
    log = os.path.join(workdir, "demo.log")
    assert f"library logs (absl, Orbax, JAX) go to {log}" in console
    for phase in ("eval:", "train:", "export:"):
        assert phase in console, phase
    assert "checkpoint_manager" not in console and "CheckpointManager" not in console  # Orbax INFO
    with open(log) as f:
        text = f.read()
    assert "CheckpointManager" in text and "INFO" in text


def test_build_manifest_counts_are_consistent(first):
    workdir, report, _ = first
    with open(os.path.join(workdir, "data", "manifest.json")) as f:
        manifest = json.load(f)
    t, tr = manifest["totals"], report["traces"]
    assert tr["traces_per_question"] == 4 and tr["questions_in"] == 48 == tr["questions_kept"]
    assert tr["samples"] == 48 * 8  # n = 8 teacher samples per question
    assert tr["traces_accepted"] == t["traces_kept"] == sum(e["records"] for es in manifest["files"].values()
                                                              for e in es)
    assert tr["questions_kept"] <= tr["traces_accepted"] <= 4 * tr["questions_kept"]
    # the teacher is wrong about a third of the time: rejection sampling dropped those samples
    assert 0.45 <= tr["samples_correct"] / tr["samples"] <= 0.8
    dropped = t["dropped_samples"]
    assert dropped["wrong_answer"] + dropped.get("no_answer", 0) == tr["samples"] - tr["samples_correct"]


def test_hf_export_reloads_with_transformers_and_answers(first):
    workdir, report, _ = first
    pytest.importorskip("torch")
    hf = report["hf_check"]
    assert hf is not None and hf["question_id"].startswith("demo_mm_reasoning/test-")
    assert isinstance(hf["response"], str) and hf["correct"] == (hf["answer"] == hf["truth"])
    assert os.path.exists(os.path.join(workdir, "hf", "config.json"))


def test_interrupted_then_rerun_gives_the_report_of_an_uninterrupted_run(first, demo_env, tmp_path):
    _, report, _ = first
    workdir = str(tmp_path / "interrupted")
    out = interrupt_demo(workdir, demo_env, "--config.demo.hf_check=False")
    assert "interrupted at step" in out and "rerun the same command to resume" in out, out[-3000:]
    assert not os.path.exists(os.path.join(workdir, "demo_report.json"))
    before = os.path.join(workdir, "demo_eval", "step_0.json")
    mtime = os.path.getmtime(before)
    again, _ = run_demo(workdir, demo_env, "--config.demo.hf_check=False")
    assert os.path.getmtime(before) == mtime  # the eval before training is the first run's
    with open(os.path.join(workdir, "demo.log")) as f:
        assert "resumed from step" in f.read()
    for field in ("categories", "traces", "tokens_trained", "steps", "final_loss", "losses"):
        assert again[field] == report[field], field
