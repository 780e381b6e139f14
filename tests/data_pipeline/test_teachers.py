"""The teacher client against a real HTTP server on 127.0.0.1 that injects faults."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_openai import FakeOpenAI, cycling_faults  # noqa: E402

from data_pipeline.records import ImageRef, Question
from data_pipeline.store import CompletionStore
from data_pipeline.teachers import (
    Accounting,
    OpenAITeacher,
    Teacher,
    TeacherConfig,
    TeacherError,
    image_data_url,
    question_messages,
    sample_questions,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PNG = b"\x89PNG\r\n\x1a\nfake"


def make_questions(k: int, source: str = "medqa") -> list[Question]:
    return [
        Question(
            id=f"q{i}",
            source=source,
            category="text",
            question=f"Question number {i}: which is right?",
            options={"A": "alpha", "B": "beta", "C": "gamma"},
            answer="A",
        )
        for i in range(k)
    ]


def fast_config(url: str, **kw) -> TeacherConfig:
    base = dict(
        name="fake-r1",
        base_url=url,
        model="fake",
        prompt_version="v1",
        n=4,
        max_n_per_request=2,
        max_retries=6,
        backoff_base_s=0.005,
        backoff_max_s=0.02,
        connect_timeout_s=2.0,
        read_timeout_s=0.15,
        price_input_per_1m=1.0,
        price_output_per_1m=4.0,
    )
    base.update(kw)
    return TeacherConfig(**base)


def test_every_question_completes_despite_faults(tmp_path):
    qs = make_questions(12)
    with FakeOpenAI(fault_plan=cycling_faults(first_attempts=2), timeout_sleep_s=0.3) as srv:
        cfg = fast_config(srv.base_url, n=5)
        teacher = OpenAITeacher(cfg, rng=random.Random(0))
        assert isinstance(teacher, Teacher)
        store = CompletionStore(str(tmp_path / "c.sqlite"))
        acct = Accounting()
        results = list(sample_questions(teacher, qs, store, n=5, concurrency=4, accounting=acct))
    assert sorted(r.question.key for r in results) == sorted(q.key for q in qs)
    assert all(r.error is None for r in results)
    for r in results:
        assert [c.sample_index for c in r.completions] == [0, 1, 2, 3, 4]
        # Sample s answers A when s is even.
        assert ["A" in c.content.split("boxed")[1] for c in r.completions] == [True, False, True, False, True]
    # Every kind of fault was injected, and nothing was stored twice.
    assert set(srv.faults) == {"429", "500", "timeout", "malformed"}
    assert store.count() == 12 * 5
    assert store.count(teacher) == 12 * 5
    # n=5 in chunks of 2 -> 3 requests per question; usage is 100 prompt + 10 per choice.
    d = acct.to_dict()["fake-r1"]
    assert d["requests"] == 36 and d["failures"] == 0
    assert d["prompt_tokens"] == 36 * 100
    assert d["completion_tokens"] == 12 * 5 * 10
    assert d["cost_usd"] == pytest.approx((3600 * 1.0 + 600 * 4.0) / 1e6)
    stored_tokens = sum(c.prompt_tokens for c in store.iter_all())
    assert stored_tokens == 3600


def test_n_capped_by_endpoint_is_filled_by_more_requests(tmp_path):
    qs = make_questions(3)
    with FakeOpenAI(max_n=3) as srv:  # the endpoint returns at most 3 choices whatever n is
        teacher = OpenAITeacher(fast_config(srv.base_url, max_n_per_request=8))
        store = CompletionStore(str(tmp_path / "c.sqlite"))
        results = list(sample_questions(teacher, qs, store, n=8, concurrency=2, max_rounds=4))
    assert all(len(r.completions) == 8 for r in results)
    assert all(v == 1 for v in srv.served.values())
    assert len(srv.served) == 3 * 8


def test_reasoning_content_kept_separately(tmp_path):
    with FakeOpenAI(reasoning_content=True) as srv:
        teacher = OpenAITeacher(fast_config(srv.base_url))
        q = make_questions(1)[0]
        (c0, c1) = teacher.sample(q, [0, 1])
    assert c0.reasoning_content == f"Thinking about {q.key} sample 0."  # the key the request names
    assert c0.content == "The answer is \\boxed{A}."
    assert c1.sample_index == 1 and c1.content.endswith("\\boxed{B}.")
    assert (c0.prompt_tokens, c1.prompt_tokens) == (100, 0)  # the prompt is billed once per request


def test_request_body_and_images(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "x.jpg").write_bytes(b"jpegbytes")
    q = Question(
        id="1",
        source="pmc_vqa",
        category="mm_reasoning",
        question="What is shown?",
        options={"A": "a", "B": "b"},
        answer="B",
        images=(ImageRef(data=PNG, format="png"), ImageRef(path="img/x.jpg")),
    )
    with FakeOpenAI() as srv:
        cfg = fast_config(srv.base_url, system_prompt="Be careful.", temperature=0.6, top_p=0.95, max_tokens=77)
        teacher = OpenAITeacher(cfg, image_root=str(tmp_path))
        teacher.sample(q, [0, 1])
        body = srv.bodies[-1]
    assert body["n"] == 2 and body["temperature"] == 0.6 and body["top_p"] == 0.95
    assert body["max_tokens"] == 77 and body["model"] == "fake"
    sys_msg, user = body["messages"]
    assert sys_msg == {"role": "system", "content": "Be careful."}
    parts = user["content"]
    assert parts[0]["image_url"]["url"] == image_data_url(PNG, "png")
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert parts[2]["type"] == "text" and "What is shown?" in parts[2]["text"]
    bad = dataclasses.replace(q, images=(ImageRef(path="../../etc/passwd"),))
    with pytest.raises(TeacherError, match="escapes"):
        question_messages(bad, cfg, str(tmp_path))


def test_api_key_sent_but_never_in_errors(monkeypatch):
    secret = "sk-very-secret-123"
    monkeypatch.setenv("FAKE_KEY", secret)
    with FakeOpenAI(require_key=secret) as srv:
        good = OpenAITeacher(fast_config(srv.base_url, api_key_env="FAKE_KEY"))
        assert len(good.sample(make_questions(1)[0], [0])) == 1
        assert secret not in repr(good) and secret not in repr(good.config)
        monkeypatch.setenv("FAKE_KEY", "sk-wrong-" + secret)  # 401: not retryable, message redacted
        with pytest.raises(TeacherError) as e:
            good.sample(make_questions(1)[0], [0])
    assert "401" in str(e.value) and secret not in str(e.value)
    monkeypatch.delenv("FAKE_KEY")
    with pytest.raises(TeacherError, match="FAKE_KEY is not set"):
        OpenAITeacher(fast_config("http://127.0.0.1:1", api_key_env="FAKE_KEY"))


def test_retries_exhausted_is_reported_not_fatal(tmp_path):
    qs = make_questions(3)
    q0, q1, q2 = (q.key for q in qs)
    with FakeOpenAI(fault_plan=lambda q, s, a: "500" if q == q1 else "ok") as srv:
        teacher = OpenAITeacher(fast_config(srv.base_url, max_retries=2))
        store = CompletionStore(str(tmp_path / "c.sqlite"))
        acct = Accounting()
        res = {r.question.key: r for r in sample_questions(teacher, qs, store, n=4, accounting=acct)}
    assert res[q1].error is not None and "3 attempts" in res[q1].error
    assert len(res[q1].completions) == 0
    assert res[q0].error is None and len(res[q2].completions) == 4
    assert acct.to_dict()["fake-r1"]["failures"] == 2  # both chunks of q1 failed


CLIENT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from data_pipeline.records import Question
    from data_pipeline.store import CompletionStore
    from data_pipeline.teachers import OpenAITeacher, TeacherConfig, sample_questions
    qs = [Question(id=f"q{{i}}", source="medqa", category="text", question=f"Q {{i}}?",
                   options={{"A": "a", "B": "b"}}, answer="A") for i in range({nq})]
    cfg = TeacherConfig(name="fake-r1", base_url={url!r}, model="fake", max_n_per_request=2,
                        backoff_base_s=0.005, backoff_max_s=0.02, read_timeout_s=5)
    store = CompletionStore({db!r})
    for r in sample_questions(OpenAITeacher(cfg), qs, store, n={n}, concurrency=3):
        pass
    print("done", store.count())
    """
)


def test_sigkill_midway_then_restart_requests_only_missing(tmp_path):
    nq, n = 10, 8
    db = str(tmp_path / "c.sqlite")
    with FakeOpenAI(delay_s=0.03) as srv:
        script = CLIENT.format(repo=REPO, nq=nq, n=n, url=srv.base_url, db=db)
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 30
        while sum(srv.served.values()) < 14 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.005)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        srv.wait_idle()  # requests the killed client left behind must not count as the restart's
        first = dict(srv.served)
        store = CompletionStore(db)
        stored = {(c.question_key, c.sample_index) for c in store.iter_all()}
        store.close()
        # Killed midway: some but not all samples are stored.
        assert 0 < len(stored) < nq * n
        assert stored <= set(first)
        srv.served.clear()
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"done {nq * n}"
    keys = [Question(f"q{i}", "medqa", "text", f"Q {i}?", {"A": "a", "B": "b"}, "A").key for i in range(nq)]  # CLIENT's
    everything = {(k, s) for k in keys for s in range(n)}
    # The restart asked for exactly what the store lacked, once each.
    assert set(srv.served) == everything - stored
    assert all(v == 1 for v in srv.served.values())
    store = CompletionStore(db)
    assert store.count() == nq * n
    assert {(c.question_key, c.sample_index) for c in store.iter_all()} == everything


def test_backoff_grows_with_jitter_and_honours_retry_after():
    t = OpenAITeacher(
        TeacherConfig(name="t", base_url="http://127.0.0.1:1", model="m", backoff_base_s=1, backoff_max_s=8),
        rng=random.Random(0),
    )
    d = [t._backoff_s(a, None) for a in range(6)]
    assert 0.5 <= d[0] <= 1 and 1 <= d[1] <= 2 and 2 <= d[2] <= 4
    assert all(4 <= x <= 8 for x in d[3:])  # capped at backoff_max_s
    assert len(set(d)) == 6  # jittered
    assert t._backoff_s(0, 5.0) == 5.0  # Retry-After wins when longer
