"""The chat server: one batching worker over the sampler, and a small threaded HTTP server in front of it.

Concurrent requests are queued; one worker thread takes whatever is waiting (up to `ServeConfig.max_batch`
rows, after waiting at most `ServeConfig.batch_wait_s` for more) and runs it as one sampler call, each request
with its own settings. Request validation and response shapes live in `serving/openai_api.py`; this module only
moves bytes and keeps serving after bad input (4xx) or a failed sampler call (500).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from octomed_jax.serving.openai_api import (
    RequestError,
    ServeConfig,
    completion_body,
    error_body,
    models_body,
    parse_request,
)

if TYPE_CHECKING:
    from jax.sharding import Mesh
    from transformers import PreTrainedTokenizerFast

    from octomed_jax.generation.sampler import Prompt, Sampler, SamplingParams
    from octomed_jax.models.qwen2_5_vl import Qwen25VL

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class BatchWorker:
    """One thread that runs queued requests through the sampler, grouping those that arrive together."""

    def __init__(self, sampler: Sampler, cfg: ServeConfig):
        self.sampler, self.cfg = sampler, cfg
        self.queue: queue.Queue[tuple[Prompt, SamplingParams, Future]] = queue.Queue()
        self.batches: list[int] = []  # requests per sampler call (for tests and logs)
        self.thread = threading.Thread(target=self._loop, name="sampler", daemon=True)
        self.thread.start()

    def submit(self, prompt: Prompt, params: SamplingParams) -> Future:
        """Queues one request; the future resolves to its completions (or the sampler's exception)."""
        future: Future = Future()
        self.queue.put((prompt, params, future))
        return future

    def _loop(self) -> None:
        while True:
            items = [self.queue.get()]
            rows = items[0][1].n
            deadline = time.monotonic() + self.cfg.batch_wait_s
            while rows < self.cfg.max_batch:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                items.append(item)
                rows += item[1].n
            self.batches.append(len(items))
            try:
                outs = self.sampler.generate([p for p, _, _ in items], [s for _, s, _ in items])
            except Exception as e:  # noqa: BLE001  every waiting request must hear about it
                for _, _, f in items:
                    f.set_exception(e)
                continue
            for (_, _, f), out in zip(items, outs, strict=True):
                f.set_result(out)


def make_server(
    sampler: Sampler,
    tokenizer: PreTrainedTokenizerFast,
    cfg: ServeConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
) -> ThreadingHTTPServer:
    """The HTTP server (not started: call `serve_forever`, e.g. in a thread). `port=0` picks a free port.

    Routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health` (also without the `/v1` prefix).
    `cfg` None: the default `ServeConfig`. The server's `worker` attribute is its `BatchWorker`.
    """
    cfg = cfg or ServeConfig()
    worker = BatchWorker(sampler, cfg)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet: one line per request is noise here
            pass

        def _send(self, status: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, e: RequestError) -> None:
            self._send(e.status, error_body(e))

        def do_GET(self) -> None:  # noqa: N802  (http.server naming)
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(200, models_body(cfg))
            elif self.path.rstrip("/") == "/health":
                self._send(200, {"status": "ok"})
            else:
                self._error(RequestError(f"no route {self.path}", 404, code="not_found"))

        def do_POST(self) -> None:  # noqa: N802
            try:
                if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                    raise RequestError(f"no route {self.path}", 404, code="not_found")
                length = int(self.headers.get("Content-Length") or -1)
                if length < 0:
                    raise RequestError("a Content-Length header is required", 411)
                if length > cfg.max_request_bytes:
                    self.close_connection = True  # the body is not read
                    raise RequestError(
                        f"request body is {length} bytes; this server accepts at most {cfg.max_request_bytes}",
                        413,
                        code="request_too_large",
                    )
                body = self.rfile.read(length)
                prompt, params = parse_request(body, cfg, tokenizer)
                completions = worker.submit(prompt, params).result()
            except RequestError as e:
                self._error(e)
                return
            except Exception as e:  # noqa: BLE001  report and keep serving
                self._error(RequestError(f"internal error: {type(e).__name__}: {e}", 500, code="internal_error"))
                return
            self._send(200, completion_body(prompt, completions, tokenizer, cfg))

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.worker = worker  # type: ignore[attr-defined]
    return server


def serve(
    model: Qwen25VL,
    tokenizer: PreTrainedTokenizerFast,
    cfg: ServeConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    mesh: Mesh | None = None,
) -> None:
    """Serves `model` until interrupted (Ctrl-C), then closes the socket.

    Args:
      model: the model, its parameters already placed (on `mesh` if given).
      tokenizer: its tokenizer (prompts through THE chat template, completions decoded).
      cfg: limits, the run's default system prompt, pixel bounds and stop ids, batching.
      host: address to bind; anything but loopback exposes the model and is warned about.
      port: port (0 picks a free one).
      mesh: the mesh the parameters live on (tensor-parallel decoding); None: one device.
    """
    from octomed_jax.generation.sampler import Sampler

    sampler = Sampler(model, mesh=mesh, max_batch=cfg.max_batch, stop_token_ids=cfg.stop_ids)
    server = make_server(sampler, tokenizer, cfg, host, port)
    if host not in LOOPBACK_HOSTS:
        print(f"[serve] WARNING: listening on {host}: anyone who can reach this address can use the model")
    print(f"[serve] {cfg.model_name} at http://{host}:{server.server_address[1]}/v1/chat/completions")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        print(f"[serve] stopped after {len(server.worker.batches)} sampler call(s)")  # type: ignore[attr-defined]


__all__ = ["BatchWorker", "make_server", "serve"]
