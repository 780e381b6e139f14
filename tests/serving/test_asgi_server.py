"""The ASGI server under the official openai client, load and abuse: one tiny model and one server for the module."""

import base64
import concurrent.futures
import http.client
import io
import json
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from octomed_jax.generation.sampler import Completion, Prompt, SamplingParams
from octomed_jax.serving import BatchWorker, RequestError, ServeConfig, start_server
from octomed_jax.serving.server import Job

openai = pytest.importorskip("openai")

CFG = ServeConfig(
    max_request_bytes=12 * 2**20,
    max_batch=8,
    max_batch_patches=2048,
    max_request_pixels=20_000_000,
    batch_wait_s=0.05,
    default_max_tokens=4,
    header_timeout_s=1.0,
    body_timeout_s=1.0,
)


@pytest.fixture(scope="module")
def server():
    from octomed_jax.data.tokenizer import default_tokenizer_dir, load_tokenizer
    from octomed_jax.generation.sampler import Sampler
    from octomed_jax.models.config import get_preset
    from octomed_jax.models.qwen2_5_vl import init_model

    model = init_model(get_preset("tiny"), seed=3)
    with start_server(Sampler(model, max_batch=CFG.max_batch), load_tokenizer(default_tokenizer_dir()), CFG) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def png(size, mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_message(*urls, text="Which modality?"):
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def post(server, body, headers=None):
    """(status, headers, JSON) of a raw POST; `body` bytes are sent as they are."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", "/v1/chat/completions", data, {"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    out = r.status, dict(r.getheaders()), json.loads(r.read() or b"null")
    conn.close()
    return out


def raw(server, data: bytes, wait: float = 5.0) -> bytes:
    """What the server answers to raw bytes before closing (or `wait` seconds)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait) as s:
        s.sendall(data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got


def test_streaming_and_plain_answers_agree(client):
    messages = [{"role": "user", "content": "Name a bone of the arm."}]
    plain = client.chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=6)
    stream = client.chat.completions.create(
        model="m", messages=messages, temperature=0, max_tokens=6, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content and text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == {
        **plain.usage.model_dump(),
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
    }
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2  # more than one piece
    # n > 1, sampled with a seed: each streamed choice is its non-streamed twin.
    kwargs = {"model": "m", "messages": messages, "temperature": 1.0, "n": 3, "seed": 11, "max_tokens": 5}
    plain = client.chat.completions.create(**kwargs)
    assert [c.index for c in plain.choices] == [0, 1, 2] and plain.usage.completion_tokens <= 15
    streamed = ["", "", ""]
    for c in client.chat.completions.create(**kwargs, stream=True):
        streamed[c.choices[0].index] += c.choices[0].delta.content or ""
    assert streamed == [c.message.content for c in plain.choices]


def test_images_by_data_url_models_and_health(client, server):
    reply = client.chat.completions.create(
        model="m", messages=image_message(png((56, 84)), png((84, 56))), temperature=0, max_tokens=3
    )
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage.prompt_tokens > 2 * 6  # both images' tokens (2x3 merged patches each) are in the prompt
    assert [m.id for m in client.models.list().data] == ["octomed-jax"]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/health")
    assert json.loads(conn.getresponse().read())["status"] == "ok"


def test_forty_concurrent_requests_all_served(server):
    body = {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0, "max_tokens": 2}
    before = len(server.worker.batches)
    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        results = list(pool.map(lambda _: post(server, body), range(40)))
    assert [s for s, _, _ in results] == [200] * 40
    assert len({r["choices"][0]["message"]["content"] for _, _, r in results}) == 1
    assert len(server.worker.batches) - before <= 40 // 2  # batched, at most 8 rows a call


def test_stalled_clients_are_closed(server):
    start = time.monotonic()
    assert raw(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n") == b""  # head never finished
    assert raw(server, b"") == b""  # connected, nothing sent
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
    answer = raw(server, head)  # body never finished
    assert answer.startswith(b"HTTP/1.1 408") and b"not received within 1.0 s" in answer
    assert time.monotonic() - start < 6


def test_huge_images_are_refused_alone(client, server):
    big = png((4096, 4096), mode="1")
    ordinary = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        too_many_pixels = pool.submit(post, server, {"messages": image_message(big, big), "max_tokens": 2})
        too_many_patches = pool.submit(post, server, {"messages": image_message(png((504, 504)), png((504, 504)))})
        fine = pool.submit(post, server, ordinary)
        status, _, body = too_many_pixels.result()
        assert status == 413 and "33.6 megapixels together; this server accepts at most 20.0" in str(body)
        status, _, body = too_many_patches.result()
        assert status == 413 and "make 2592 patches once resized" in body["error"]["message"]
        assert fine.result()[0] == 200
    too_long = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8192, "n": 16}
    status, _, body = post(server, too_long)
    assert status == 413 and "needs 16 rows" in body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"messages": [{"role": "user", "content": "Hi"}], "n": Infinity}', "Infinity, which is not JSON"),
        (b'{"messages": [{"role": "user", "content": "Hi"}], "temperature": 1e999}', "the number 1e999"),
        (b'{"messages": [{"role": "user", "content": "Hi"}], "n": 1' + b"0" * 5000 + b"}", "not valid JSON"),
        (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"messages": [{"role": "user", "content": "Hi"}], "n": "2"}', "'n' must be a int, got str"),
        (b'{"messages": [{"role": "user", "content": "Hi"}], "stream": 1}', "'stream' must be a boolean"),
        (b'{"messages": [{"role": "user", "content": "<|im_start|>"}]}', "control"),
        (b'{"messages": {"role": "user"}}', "'messages' must be a non-empty list"),
        (b"[1]", "must be a JSON object"),
    ],
)
def test_malformed_values_are_400(server, body, message):
    status, _, got = post(server, body)
    assert status == 400 and message in got["error"]["message"], got


def test_bad_content_length_is_400(server):
    answer = raw(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}")
    assert answer.startswith(b"HTTP/1.1 400")


def test_300k_messages_refused_before_templating(server):
    body = json.dumps({"messages": [{"role": "user", "content": "x"}] * 300_000}).encode()
    assert len(body) > 9_000_000
    start = time.monotonic()
    status, _, got = post(server, body)
    assert status == 400 and "holds 300000 messages; this server accepts at most 512" in got["error"]["message"]
    assert time.monotonic() - start < 5  # the template never ran (it took 34 s)


class _BlockedSampler:
    """Stands in for the sampler: records batches, answers once released."""

    min_prompt_bucket, min_budget_bucket = 32, 16

    def __init__(self):
        self.release, self.calls = threading.Event(), []

    def generate(self, prompts, params, on_tokens=None, chunk_tokens=8):
        self.calls.append(len(prompts))
        self.release.wait(10)
        return [[Completion([1], "stop", 2)] * p.n for p in params]


def test_worker_bounds_its_queue_and_its_batches():
    import asyncio

    cfg = ServeConfig(max_queue=3, max_batch=8, max_batch_tokens=4 * (32 + 64), batch_wait_s=0.05, retry_after_s=2)
    sampler = _BlockedSampler()
    worker = BatchWorker(sampler, cfg)
    loop = asyncio.new_event_loop()
    job = lambda n, budget: Job(Prompt(np.ones(20, np.int32)), SamplingParams(n=n, max_new_tokens=budget), False, loop)  # noqa: E731
    worker.submit(job(1, 4))
    while not sampler.calls:  # the first call runs (and blocks)
        time.sleep(0.01)
    # 4 rows x 96 slots fit together; a fifth row makes 8 x 96: the next call.
    for j in (job(2, 40), job(2, 4), job(1, 4)):
        worker.submit(j)
    with pytest.raises(RequestError) as e:
        worker.submit(job(1, 4))
    assert (e.value.status, e.value.retry_after, e.value.code) == (503, 2, "overloaded")
    with pytest.raises(RequestError, match="needs 8 rows, 768 token slots"):
        worker.submit(job(8, 40))
    sampler.release.set()
    while worker.queued or len(sampler.calls) < 3:
        time.sleep(0.01)
    assert sampler.calls == [1, 2, 1]
    loop.close()
