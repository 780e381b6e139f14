"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests, with fault injection and request counts.

Faults are chosen per (question, samples, attempt) from a fixed plan, so runs are reproducible. The
answer of sample s is `answer_fn(question_key, s)` (default: "A" when s is even, else "B").
"""

from __future__ import annotations

import collections
import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Callable

FAULTS = ("429", "500", "timeout", "malformed", "ok")


class FakeOpenAI:
    """Starts a threaded HTTP server; use as a context manager.

    Attributes:
      served: Counter of (question_key, sample_index) answered with 200 and a good body.
      attempts: Counter of (question_key, samples-string) requests of any outcome.
      faults: Counter of injected faults by kind.
    """

    def __init__(
        self,
        *,
        fault_plan: Callable[[str, str, int], str] | None = None,
        answer_fn: Callable[[str, int], str] | None = None,
        reasoning_content: bool = False,
        timeout_sleep_s: float = 0.5,
        max_n: int | None = None,
        require_key: str | None = None,
        delay_s: float = 0.0,
        judge_fn: Callable[[str], int] | None = None,
    ):
        self.fault_plan = fault_plan or (lambda q, s, attempt: "ok")
        self.answer_fn = answer_fn or (lambda q, s: "A" if s % 2 == 0 else "B")
        self.reasoning_content = reasoning_content
        self.timeout_sleep_s = timeout_sleep_s
        self.max_n = max_n
        self.require_key = require_key
        self.delay_s = delay_s
        self.judge_fn = judge_fn or (lambda q: 5)
        self.served: collections.Counter = collections.Counter()
        self.attempts: collections.Counter = collections.Counter()
        self.faults: collections.Counter = collections.Counter()
        self.bodies: list[dict] = []
        self.inflight = 0  # requests being handled now (a killed client leaves some behind)
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, code: int, body: bytes, headers: dict | None = None) -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self):
                with outer.lock:
                    outer.inflight += 1
                try:
                    self._post()
                finally:
                    with outer.lock:
                        outer.inflight -= 1

            def _post(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                qkey = urllib.parse.unquote(self.headers.get("X-Octomed-Question", ""))
                samples = self.headers.get("X-Octomed-Samples", "")
                if outer.require_key and self.headers.get("Authorization") != f"Bearer {outer.require_key}":
                    self._send(401, b'{"error": "bad key"}')
                    return
                with outer.lock:
                    attempt = outer.attempts[(qkey, samples)]
                    outer.attempts[(qkey, samples)] += 1
                    outer.bodies.append(body)
                fault = outer.fault_plan(qkey, samples, attempt)
                if fault != "ok":
                    with outer.lock:
                        outer.faults[fault] += 1
                if fault == "429":
                    self._send(429, b'{"error": "rate limited"}', {"Retry-After": "0"})
                    return
                if fault == "500":
                    self._send(500, b'{"error": "boom"}')
                    return
                if fault == "timeout":
                    time.sleep(outer.timeout_sleep_s)
                    self._send(500, b'{"error": "too late"}')
                    return
                if fault == "malformed":
                    self._send(200, b'{"choices": [{"message": ')
                    return
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                idx = [int(x) for x in samples.split(",")] if samples else list(range(body.get("n", 1)))
                n = body.get("n", 1)
                if outer.max_n is not None:
                    n = min(n, outer.max_n)
                choices = []
                for i, s in enumerate(idx[:n]):
                    letter = outer.answer_fn(qkey, s)
                    msg = {"role": "assistant"}
                    if "Rate the difficulty" in json.dumps(body["messages"]):  # a judge prompt
                        msg["content"] = f"Looks moderate.\nDifficulty: {outer.judge_fn(qkey)}"
                    elif outer.reasoning_content:
                        msg["reasoning_content"] = f"Thinking about {qkey} sample {s}."
                        msg["content"] = f"The answer is \\boxed{{{letter}}}."
                    else:
                        msg["content"] = f"Reasoning for sample {s}. The answer is \\boxed{{{letter}}}."
                    choices.append({"index": i, "message": msg, "finish_reason": "stop"})
                resp = {
                    "id": "x",
                    "object": "chat.completion",
                    "choices": choices,
                    "usage": {"prompt_tokens": 100, "completion_tokens": 10 * len(choices)},
                }
                with outer.lock:
                    for s in idx[: len(choices)]:
                        outer.served[(qkey, s)] += 1
                self._send(200, json.dumps(resp).encode())

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def wait_idle(self, timeout_s: float = 5.0) -> None:
        """Waits until no request is being handled."""
        deadline = time.time() + timeout_s
        quiet = 0  # requests still queued in the socket get a moment to show up
        while quiet < 5 and time.time() < deadline:
            quiet = quiet + 1 if not self.inflight else 0
            time.sleep(0.01)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def cycling_faults(first_attempts: int = 1) -> Callable[[str, str, int], str]:
    """Every request's first `first_attempts` attempts fail, cycling through the fault kinds by key."""

    def plan(q: str, s: str, attempt: int) -> str:
        if attempt >= first_attempts:
            return "ok"
        kinds = ("429", "500", "timeout", "malformed")
        return kinds[(sum(map(ord, q + s)) + attempt) % len(kinds)]

    return plan
