"""evaluate and serve on a tiny full-vocabulary checkpoint: same greedy answers as the sampler, the official
openai client, resumability, and bad input answered with 4xx while the server keeps serving."""

import http.client
import io
import json
import os
import urllib.parse

import pytest
from eval_helpers import data_url, png_bytes
from PIL import Image

from data_pipeline.formats import render_question
from octomed_jax.evaluation.benchmarks import BENCHMARKS
from octomed_jax.generation import Sampler, SamplingParams, question_prompt

BUDGET = 8
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=BUDGET)


@pytest.fixture(scope="module")
def evaluated(checkpoint, data_dir, tmp_path_factory):
    from octomed_jax.evaluation.protocol import QUICK
    from octomed_jax.evaluation.suite import evaluate_benchmarks

    out = str(tmp_path_factory.mktemp("eval_out"))
    final = evaluate_benchmarks(checkpoint, "medqa,pmc_vqa,bcss", data_dir, out, GREEDY, protocol=QUICK, max_batch=8)
    return out, final


def test_evaluate_writes_results_and_resumes(evaluated, checkpoint, data_dir, capsys, monkeypatch):
    from octomed_jax import checkpoint as ckpt_lib
    from octomed_jax.evaluation.protocol import QUICK
    from octomed_jax.evaluation.suite import evaluate_benchmarks

    out, final = evaluated
    metrics = final["metrics"]
    assert set(metrics["benchmarks"]) == {"medqa", "pmc_vqa"}
    assert "bcss" in final["missing"]  # no files for it: reported, not fatal
    assert metrics["benchmarks"]["medqa"]["num_questions"] == 2
    assert metrics["benchmarks"]["pmc_vqa"]["num_questions"] == 2
    assert metrics["benchmarks"]["pmc_vqa"]["images_capped"] == 0  # one image each, under the cap of 10
    assert 1 <= metrics["benchmarks"]["medqa"]["mean_response_tokens"] <= BUDGET
    assert set(metrics["summary"]["categories"]) == {"text", "mm_reasoning"}
    for name in (
        "results.json",
        "table.md",
        "table.json",
        "response_lengths.png",
        "benchmarks/medqa.json",
        "benchmarks/pmc_vqa.responses.jsonl",
    ):
        assert os.path.exists(os.path.join(out, name)), name
    assert "| MedQA | Text avg | PMC-VQA |" in open(os.path.join(out, "table.md")).read()
    # A rerun skips what is finished: only the run contract is read, the model is not even loaded.
    before = os.path.getmtime(os.path.join(out, "benchmarks", "medqa.json"))
    monkeypatch.setattr(ckpt_lib, "load_run", lambda *a, **k: pytest.fail("the model was loaded"))
    again = evaluate_benchmarks(checkpoint, "medqa,pmc_vqa", data_dir, out, GREEDY, protocol=QUICK)
    assert "skipped: medqa, pmc_vqa" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(out, "benchmarks", "medqa.json")) == before
    assert again["metrics"]["benchmarks"] == metrics["benchmarks"]


def first_response(out, name):
    with open(os.path.join(out, "benchmarks", f"{name}.responses.jsonl")) as f:
        return json.loads(f.readline())["responses"][0][0]["text"]


def test_temperature_zero_same_answer_through_sampler_evaluate_and_serve(evaluated, model, tokenizer, data_dir, server):
    import openai

    out, _ = evaluated
    question = BENCHMARKS["pmc_vqa"].load(data_dir)[0][0]
    # 1. The sampler directly.
    completion = Sampler(model).generate([question_prompt(tokenizer, question)], GREEDY)[0][0]
    direct = tokenizer.decode(completion.token_ids, skip_special_tokens=True)
    # 2. evaluate.
    assert first_response(out, "pmc_vqa") == direct
    # 3. serve, through the official client: the same message the template builds from the question.
    client = openai.OpenAI(base_url=server[0] + "/v1", api_key="unused")
    reply = client.chat.completions.create(
        model="octomed-jax",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_url(question.images[0].data)}},
                    {"type": "text", "text": render_question(question)},
                ],
            }
        ],
        temperature=0,
        max_tokens=BUDGET,
    )
    assert reply.choices[0].message.content == direct
    assert reply.usage.completion_tokens == completion.num_tokens


def test_openai_client_image_chat_with_n_4(server):
    import openai

    client = openai.OpenAI(base_url=server[0] + "/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["octomed-jax"]
    reply = client.chat.completions.create(
        model="octomed-jax",
        messages=[
            {"role": "system", "content": "You are a radiologist."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is shown?"},
                    {"type": "image_url", "image_url": {"url": data_url(png_bytes(7))}},
                ],
            },
        ],
        n=4,
        temperature=1.0,
        top_p=0.95,
        max_tokens=6,
        seed=11,
        stream=False,
    )
    assert len(reply.choices) == 4 and [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert all(isinstance(c.message.content, str) and c.finish_reason in ("stop", "length") for c in reply.choices)
    assert len({c.message.content for c in reply.choices}) > 1  # four independent samples
    assert reply.usage.prompt_tokens > 20
    assert reply.usage.completion_tokens <= 4 * 6
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def post(base, body, headers=None):
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request(
        "POST", "/v1/chat/completions", body=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read() or b"{}")
    conn.close()
    return out


def big_png(megapixels=50):
    side = int((megapixels * 1e6) ** 0.5) + 1
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_input_gets_4xx_and_the_server_keeps_serving(server):
    base, srv = server
    user = lambda content: {"messages": [{"role": "user", "content": content}], "max_tokens": 2}  # noqa: E731
    image = lambda url: user([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}])  # noqa: E731
    cases = {
        "malformed JSON": (b'{"messages": [', 400, "not valid JSON"),
        "unsupported role": ({"messages": [{"role": "tool", "content": "x"}]}, 400, "role 'tool' is not supported"),
        "50-megapixel image": (image(data_url(big_png(50))), 413, "megapixels"),
        "remote URL": (image("https://example.com/x.png"), 400, "remote image URLs are refused"),
        "file URL": (image("file:///etc/passwd"), 400, "file:// image URLs are refused"),
        "bad base64": (image("data:image/png;base64,@@@"), 400, "invalid base64"),
        "not an image": (image(data_url(b"hello")), 400, "cannot read the image"),
        "stream not a boolean": ({**user("hi"), "stream": "yes"}, 400, "'stream' must be a boolean"),
        "bad temperature": ({**user("hi"), "temperature": -1}, 400, "'temperature' must be between"),
        "too many tokens": ({**user("hi"), "max_tokens": 10**6}, 400, "'max_tokens' must be between"),
        "oversized body": (b"x" * (300 * 1024), 413, "at most"),
    }
    for name, (body, status, message) in cases.items():
        got_status, got = post(base, body)
        assert got_status == status, (name, got)
        assert message in got["error"]["message"], (name, got)
        assert got["error"]["type"] == "invalid_request_error"
    # Still serving.
    status, ok = post(base, user("Hello"))
    assert status == 200 and ok["choices"][0]["message"]["role"] == "assistant"


def test_concurrent_requests_are_batched(server):
    import concurrent.futures

    base, srv = server
    before = len(srv.worker.batches)
    body = {"messages": [{"role": "user", "content": "Say something."}], "temperature": 0, "max_tokens": 3}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: post(base, body), range(4)))
    assert all(s == 200 for s, _ in results)
    assert len({r["choices"][0]["message"]["content"] for _, r in results}) == 1  # greedy: identical
    assert len(srv.worker.batches) - before < 4  # at least two requests shared a sampler call
