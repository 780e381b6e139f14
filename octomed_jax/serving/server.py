"""The chat server: one batching worker over the sampler, behind Starlette on uvicorn.

Requests are parsed and checked on worker threads (`openai_api.parse_request`: every limit that costs nothing is
checked before images are decoded or the template runs), then queued for the one sampler thread
(`BatchWorker`). The queue is bounded (`ServeConfig.max_queue`; beyond it 503 with `Retry-After`). The worker
takes the oldest request and adds waiting ones while the batch stays within `max_batch` rows,
`max_batch_tokens` padded token slots and `max_batch_patches` image patches; a request that cannot fit even
alone is refused on arrival (413), so it never shares, let alone breaks, a batch. Streaming requests
(`stream=true`) get OpenAI's server-sent events, token by token as the sampler decodes them in chunks.

uvicorn bounds connections (`max_connections`, 503 beyond) and closes keep-alive connections left idle; the
protocol below also closes a connection whose request head is not complete within `header_timeout_s` (uvicorn
has no such timeout), and a body not received within `body_timeout_s` is answered 408. Starlette over FastAPI:
the request body is read and checked by hand anyway (limits before parsing, exact 400 messages), so FastAPI's
validation layer would go unused.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from octomed_jax.generation.sampler import bucket
from octomed_jax.serving.openai_api import (
    RequestError,
    ServeConfig,
    chunk_body,
    completion_body,
    error_body,
    models_body,
    parse_request,
    read_json,
    stream_settings,
    usage_body,
)

if TYPE_CHECKING:
    from jax.sharding import Mesh
    from transformers import PreTrainedTokenizerFast

    from octomed_jax.generation.sampler import Completion, Prompt, Sampler, SamplingParams
    from octomed_jax.models.qwen2_5_vl import Qwen25VL

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclasses.dataclass(eq=False)
class Job:
    """One admitted request. The worker thread reports to its event loop through `events`:
    ("tokens", sample, ids) while streaming, then ("done", completions) or ("error", exception)."""

    prompt: Prompt
    params: SamplingParams
    stream: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = dataclasses.field(default_factory=asyncio.Queue)
    cancelled: bool = False  # the client went away: skipped if not started

    def report(self, *event: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop has closed: nobody is listening
            pass


class BatchWorker:
    """One thread that runs queued requests through the sampler, batching those that arrive together within
    the row, token and patch bounds of `cfg`.

    Attributes:
      batches: requests per sampler call (for tests and logs).
    """

    def __init__(self, sampler: Sampler, cfg: ServeConfig):
        self.sampler, self.cfg = sampler, cfg
        self.batches: list[int] = []
        self._pending: collections.deque[Job] = collections.deque()
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        """Requests waiting for the sampler."""
        return len(self._pending)

    def cost(self, jobs: Sequence[Job]) -> tuple[int, int, int]:
        """(rows, padded token slots, image patches) of running `jobs` as one sampler call."""
        rows = sum(j.params.n for j in jobs)
        prompt = bucket(max(len(j.prompt.token_ids) for j in jobs), self.sampler.min_prompt_bucket)
        budget = bucket(max(j.params.max_new_tokens for j in jobs), self.sampler.min_budget_bucket)
        return rows, bucket(rows, 1) * (prompt + budget), sum(j.prompt.num_patches for j in jobs)

    def _fits(self, jobs: Sequence[Job]) -> bool:
        rows, tokens, patches = self.cost(jobs)
        cfg = self.cfg
        return rows <= cfg.max_batch and tokens <= cfg.max_batch_tokens and patches <= cfg.max_batch_patches

    def submit(self, job: Job) -> None:
        """Queues `job`.

        Raises:
          RequestError: 413 if it cannot run even alone; 503 with Retry-After if the queue is full.
        """
        rows, tokens, patches = self.cost([job])
        cfg = self.cfg
        if not self._fits([job]):
            raise RequestError(
                f"this request needs {rows} rows, {tokens} token slots (prompt and max_tokens, padded) and {patches} "
                f"image patches; this server runs at most {cfg.max_batch} rows, {cfg.max_batch_tokens} token slots "
                f"and {cfg.max_batch_patches} patches at once: lower n or max_tokens, or send fewer or smaller images",
                413,
                code="request_too_large",
            )
        with self._ready:
            if len(self._pending) >= cfg.max_queue:
                raise RequestError(
                    f"the server is busy ({cfg.max_queue} requests waiting); retry after {cfg.retry_after_s} s",
                    503,
                    code="overloaded",
                    retry_after=cfg.retry_after_s,
                )
            self._pending.append(job)
            self._ready.notify()

    def _take(self) -> list[Job]:
        """The next batch: the oldest request, and the waiting ones that still fit, oldest first."""
        with self._ready:
            while not self._pending:
                self._ready.wait()
        time.sleep(self.cfg.batch_wait_s)  # let requests arriving together share the call
        with self._ready:
            batch: list[Job] = []
            for job in list(self._pending):
                if job.cancelled:
                    self._pending.remove(job)
                elif not batch or self._fits([*batch, job]):
                    batch.append(job)
                    self._pending.remove(job)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch:
                self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        """One sampler call for `batch`; streaming requests hear their tokens chunk by chunk."""
        self.batches.append(len(batch))

        def on_tokens(i: int, sample: int, ids: list[int]) -> None:
            if batch[i].stream:
                batch[i].report("tokens", sample, ids)

        try:
            outs = self.sampler.generate(
                [j.prompt for j in batch],
                [j.params for j in batch],
                on_tokens=on_tokens if any(j.stream for j in batch) else None,
                chunk_tokens=self.cfg.stream_chunk_tokens,
            )
        except Exception as e:  # noqa: BLE001  every waiting request must hear about it
            for job in batch:
                job.report("error", e)
            return
        for job, out in zip(batch, outs, strict=True):
            job.report("done", out)


class _StreamText:
    """Text of one streamed sample, piece by piece: what is new since the last piece, once it decodes whole."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast):
        self.tokenizer, self.ids, self.sent = tokenizer, [], ""

    def delta(self, ids: Sequence[int] = (), final: bool = False) -> str:
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        # Hold back a split multi-byte character, and text a later token rewrites.
        if (text.endswith("\ufffd") and not final) or not text.startswith(self.sent):
            return ""
        new, self.sent = text[len(self.sent) :], text
        return new


def _internal(e: Exception) -> RequestError:
    return RequestError(f"internal error: {type(e).__name__}: {e}", 500, code="internal_error")


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _error_response(e: RequestError) -> JSONResponse:
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after is not None else {}
    if e.status in (408, 413):  # the body may be left unread on the connection: it cannot carry another request
        headers["Connection"] = "close"
    return JSONResponse(error_body(e), e.status, headers=headers)


async def _read_body(request: Request, cfg: ServeConfig) -> bytes:
    """The body, refused (413) past `max_request_bytes` before it is read whole, and (408) if it is not received
    within `body_timeout_s`. uvicorn has already answered 400 to a malformed Content-Length."""
    declared = request.headers.get("content-length")
    if declared is not None and int(declared) > cfg.max_request_bytes:
        raise RequestError(
            f"request body is {declared} bytes; this server accepts at most {cfg.max_request_bytes}",
            413,
            code="request_too_large",
        )
    body = bytearray()
    try:
        async with asyncio.timeout(cfg.body_timeout_s):
            async for piece in request.stream():
                body += piece
                if len(body) > cfg.max_request_bytes:
                    raise RequestError(
                        f"request body is over {cfg.max_request_bytes} bytes; this server accepts at most "
                        f"{cfg.max_request_bytes}",
                        413,
                        code="request_too_large",
                    )
    except TimeoutError:
        raise RequestError(
            f"request body not received within {cfg.body_timeout_s} s", 408, code="request_timeout"
        ) from None
    return bytes(body)


def make_app(sampler: Sampler, tokenizer: PreTrainedTokenizerFast, cfg: ServeConfig | None = None) -> Starlette:
    """The ASGI application. Routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health` (the first two
    also without `/v1`). `app.state.worker` is its `BatchWorker`; `cfg` None: the default `ServeConfig`."""
    cfg = cfg or ServeConfig()
    worker = BatchWorker(sampler, cfg)

    def parse(body: bytes) -> tuple[Prompt, SamplingParams, bool, bool]:
        req = read_json(body)
        stream, include_usage = stream_settings(req)
        return (*parse_request(req, cfg, tokenizer), stream, include_usage)

    async def chat(request: Request) -> Response:
        try:
            prompt, params, stream, include_usage = await run_in_threadpool(parse, await _read_body(request, cfg))
            job = Job(prompt, params, stream, asyncio.get_running_loop())
            worker.submit(job)
        except RequestError as e:
            return _error_response(e)
        if stream:
            return StreamingResponse(
                _stream(job, tokenizer, cfg, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        try:
            completions = await _finished(job)
        except Exception as e:  # noqa: BLE001  report and keep serving
            return _error_response(_internal(e))
        finally:
            job.cancelled = True
        return JSONResponse(completion_body(prompt, completions, tokenizer, cfg))

    async def models(request: Request) -> Response:
        return JSONResponse(models_body(cfg))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "queued": worker.queued, "batches": len(worker.batches)})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = "not_found" if exc.status_code == 404 else "method_not_allowed"
        message = f"no route {request.method} {request.url.path}"
        return _error_response(RequestError(message, exc.status_code, code=code))

    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.worker = worker
    return app


async def _finished(job: Job) -> list[Completion]:
    while True:
        event = await job.events.get()
        if event[0] == "done":
            return event[1]
        if event[0] == "error":
            raise event[1]


async def _stream(
    job: Job, tokenizer: PreTrainedTokenizerFast, cfg: ServeConfig, include_usage: bool
) -> AsyncIterator[bytes]:
    """OpenAI's stream: the role, then text deltas per choice as tokens arrive, each choice's finish reason, the
    usage (when asked), `[DONE]`."""
    request_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        return _sse({**chunk_body(request_id, created, cfg, [choice]), **extra})

    texts = [_StreamText(tokenizer) for _ in range(job.params.n)]
    try:
        for i in range(job.params.n):
            yield chunk(i, {"role": "assistant", "content": ""})
        while True:
            event = await job.events.get()
            if event[0] == "tokens":
                _, i, ids = event
                if piece := texts[i].delta(ids):
                    yield chunk(i, {"content": piece})
            elif event[0] == "done":
                completions = event[1]
                for i, c in enumerate(completions):
                    if piece := texts[i].delta(final=True):
                        yield chunk(i, {"content": piece})
                    yield chunk(i, {}, c.finish_reason)
                if include_usage:
                    yield _sse(chunk_body(request_id, created, cfg, [], usage_body(job.prompt, completions)))
                break
            else:
                yield _sse(error_body(_internal(event[1])))
                break
        yield b"data: [DONE]\n\n"
    finally:
        job.cancelled = True


class _TimedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request head is not complete in time."""

    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._between_requests() and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._between_requests():
            self._arm()
        super().data_received(data)
        if not self._between_requests():
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def _uvicorn_server(app: Starlette, cfg: ServeConfig, host: str, port: int) -> uvicorn.Server:
    protocol = type("TimedH11Protocol", (_TimedH11Protocol,), {"header_timeout_s": cfg.header_timeout_s})
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        lifespan="off",
        log_level="warning",
        access_log=False,
        limit_concurrency=cfg.max_connections,
        backlog=cfg.backlog,
        timeout_keep_alive=cfg.keep_alive_s,
    )
    return uvicorn.Server(config)


class RunningServer:
    """A server running in a background thread (tests, benchmarks, notebooks); a context manager that stops it.

    Attributes:
      url: `http://host:port`; `port`: the bound port; `app`; `worker`: its `BatchWorker`.
    """

    def __init__(self, app: Starlette, cfg: ServeConfig, host: str, port: int):
        self.app, self.worker = app, app.state.worker
        self._server = _uvicorn_server(app, cfg, host, port)
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the server did not start on {host}:{port} (see the log above)")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{host}:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_server(
    sampler: Sampler,
    tokenizer: PreTrainedTokenizerFast,
    cfg: ServeConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> RunningServer:
    """Starts the server in a background thread and returns once it listens. `port=0` picks a free port."""
    cfg = cfg or ServeConfig()
    return RunningServer(make_app(sampler, tokenizer, cfg), cfg, host, port)


def serve(
    model: Qwen25VL,
    tokenizer: PreTrainedTokenizerFast,
    cfg: ServeConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    mesh: Mesh | None = None,
) -> None:
    """Serves `model` until interrupted (Ctrl-C or SIGTERM).

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
    app = make_app(sampler, tokenizer, cfg)
    if host not in LOOPBACK_HOSTS:
        print(f"[serve] WARNING: listening on {host}: anyone who can reach this address can use the model")
    print(f"[serve] {cfg.model_name} at http://{host}:{port}/v1/chat/completions")
    _uvicorn_server(app, cfg, host, port).run()
    print(f"[serve] stopped after {len(app.state.worker.batches)} sampler call(s)")


__all__ = ["BatchWorker", "RunningServer", "make_app", "serve", "start_server"]
