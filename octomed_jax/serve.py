"""An OpenAI-compatible chat server over the sampler.

    python -m octomed_jax.serve --checkpoint=PATH --host=127.0.0.1 --port=8000

`POST /v1/chat/completions` takes OpenAI chat messages (text, and images as base64 `data:` URLs), `n`,
`temperature`, `top_p`, `max_tokens` (or `max_completion_tokens`), `seed`, and answers with choices and
token usage; `GET /v1/models` lists the model. Prompts go through THE chat template.

Concurrent requests are queued; one worker thread takes whatever is waiting (up to `--max_batch` rows,
after waiting at most `--batch_wait_ms` for more) and runs it as one sampler call, each request with its
own settings. The server binds 127.0.0.1 unless told otherwise. It refuses `http(s)://` and `file://`
image URLs unless `--allow_remote_images` / `--allow_file_images` are set, bounds the request body, the
number of images and their pixels (checked from the header, before decoding), and answers bad input
with a 4xx JSON error in OpenAI's shape; the server keeps serving.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import queue
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from absl import app, flags

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from octomed_jax.generation.sampler import Prompt, Sampler, SamplingParams


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Limits and switches of the server.

    Attributes:
      model_name: the id `/v1/models` reports.
      max_request_bytes: largest request body.
      max_image_pixels: largest image (width x height, read from the header before decoding).
      max_images: most images per request.
      max_pixels: images are resized to at most this area for the model (OctoMed: 512 x 512).
      max_prompt_tokens: longest prompt after the template.
      max_tokens_limit: largest `max_tokens` a request may ask for.
      default_max_tokens: `max_tokens` when the request gives none.
      max_n: largest `n`.
      allow_remote_images: fetch `http(s)://` image URLs.
      allow_file_images: read `file://` image URLs from this machine's disk.
      max_batch: most rows (samples) per sampler call.
      batch_wait_s: how long the worker waits for more requests to batch with the first.
    """

    model_name: str = "octomed-jax"
    max_request_bytes: int = 32 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_images: int = 10
    max_pixels: int = 262_144
    max_prompt_tokens: int = 16_384
    max_tokens_limit: int = 8192
    default_max_tokens: int = 1024
    max_n: int = 16
    allow_remote_images: bool = False
    allow_file_images: bool = False
    max_batch: int = 32
    batch_wait_s: float = 0.01


class RequestError(Exception):
    """A request the server refuses: HTTP status, message and the offending parameter."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str = "invalid_request"):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


# --- Request parsing -------------------------------------------------------------------------------------


def _image_bytes(url: str, cfg: ServeConfig, where: str) -> bytes:
    """The bytes of an image URL: a base64 data URL, or (if allowed) http(s) / file."""
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or ";base64" not in header:
            raise RequestError(f"{where}: only base64 data URLs are supported (data:image/png;base64,...)", param=where)
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise RequestError(f"{where}: invalid base64 image data: {e}", param=where) from e
    lowered = url.lower()
    if lowered.startswith(("http://", "https://")):
        if not cfg.allow_remote_images:
            raise RequestError(
                f"{where}: remote image URLs are refused by this server (start it with --allow_remote_images); "
                "send the image as a base64 data URL",
                param=where,
            )
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310  (scheme checked above)
            data = r.read(cfg.max_request_bytes + 1)
        if len(data) > cfg.max_request_bytes:
            raise RequestError(f"{where}: remote image larger than {cfg.max_request_bytes} bytes", 413, where)
        return data
    if lowered.startswith("file://"):
        if not cfg.allow_file_images:
            raise RequestError(
                f"{where}: file:// image URLs are refused by this server (start it with --allow_file_images)",
                param=where,
            )
        with open(url[len("file://") :], "rb") as f:
            data = f.read(cfg.max_request_bytes + 1)
        if len(data) > cfg.max_request_bytes:
            raise RequestError(f"{where}: image file larger than {cfg.max_request_bytes} bytes", 413, where)
        return data
    raise RequestError(f"{where}: unsupported image URL scheme {url.split(':', 1)[0]!r}", param=where)


def _check_pixels(data: bytes, cfg: ServeConfig, where: str) -> None:
    """Refuses an image whose header declares too many pixels, before anything is decoded."""
    import PIL.Image

    try:
        with PIL.Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except PIL.Image.DecompressionBombError as e:
        raise RequestError(f"{where}: image too large: {e}", 413, where, "image_too_large") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise RequestError(f"{where}: cannot read the image: {e}", param=where, code="invalid_image") from e
    if width * height > cfg.max_image_pixels:
        raise RequestError(
            f"{where}: image is {width}x{height} = {width * height / 1e6:.1f} megapixels; this server accepts at most "
            f"{cfg.max_image_pixels / 1e6:.1f}",
            413,
            where,
            "image_too_large",
        )


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def parse_messages(raw: Any, cfg: ServeConfig) -> tuple[list[dict[str, Any]], list[bytes]]:
    """OpenAI messages -> template messages (`{"type": "image"}` items) and the image bytes, in order."""
    if not isinstance(raw, list) or not raw:
        raise RequestError("'messages' must be a non-empty list", param="messages")
    messages: list[dict[str, Any]] = []
    images: list[bytes] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = m.get("role")
        if role not in _ROLES:
            raise RequestError(
                f"messages[{i}].role {role!r} is not supported; use one of {sorted(_ROLES)}",
                param=f"messages[{i}].role",
            )
        content = m.get("content")
        if isinstance(content, str):
            messages.append({"role": _ROLES[role], "content": content})
            continue
        if not isinstance(content, list):
            raise RequestError(f"messages[{i}].content must be a string or a list of parts", param=f"messages[{i}]")
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url":
                if role != "user":
                    raise RequestError(f"{where}: images are only accepted in user messages", param=where)
                image_url = part.get("image_url")
                url = image_url.get("url") if isinstance(image_url, dict) else image_url
                if not isinstance(url, str):
                    raise RequestError(f"{where}: image_url.url must be a string", param=where)
                if len(images) >= cfg.max_images:
                    raise RequestError(f"more than {cfg.max_images} images in one request", param=where)
                data = _image_bytes(url, cfg, where)
                _check_pixels(data, cfg, where)
                images.append(data)
                parts.append({"type": "image"})
            else:
                raise RequestError(
                    f"{where}: unsupported content part type {kind!r} (use text or image_url)", param=where
                )
        messages.append({"role": _ROLES[role], "content": parts})
    return messages, images


def _number(body: dict[str, Any], name: str, default: Any, kind: type, lo: float, hi: float) -> Any:
    value = body.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and int(value) != value):
        raise RequestError(f"'{name}' must be a {kind.__name__}", param=name)
    value = kind(value)
    if not lo <= value <= hi:
        raise RequestError(f"'{name}' must be between {lo} and {hi}, got {value}", param=name)
    return value


def parse_request(body: bytes, cfg: ServeConfig, tokenizer: PreTrainedTokenizerFast) -> tuple[Prompt, SamplingParams]:
    """Validates a chat completion request and turns it into a prompt and sampling settings.

    Raises:
      RequestError: anything the server refuses, with the status to answer.
    """
    from octomed_jax.data.images import ImageError
    from octomed_jax.data.template import TemplateError
    from octomed_jax.generation.prompts import encode_prompt
    from octomed_jax.generation.sampler import SamplingParams

    try:
        req = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"request body is not valid JSON: {e}") from e
    if not isinstance(req, dict):
        raise RequestError("request body must be a JSON object")
    if req.get("stream"):
        raise RequestError("streaming is not supported; send stream=false", param="stream")
    messages, images = parse_messages(req.get("messages"), cfg)
    max_tokens = req.get("max_completion_tokens", req.get("max_tokens"))
    params = SamplingParams(
        temperature=_number(req, "temperature", 1.0, float, 0.0, 2.0),
        top_p=_number(req, "top_p", 1.0, float, 1e-9, 1.0),
        top_k=_number(req, "top_k", 0, int, 0, 1 << 20),
        max_new_tokens=_number(
            {"max_tokens": max_tokens}, "max_tokens", cfg.default_max_tokens, int, 1, cfg.max_tokens_limit
        ),
        n=_number(req, "n", 1, int, 1, cfg.max_n),
        seed=_number(req, "seed", 0, int, 0, 2**32 - 1),
    )
    try:
        prompt = encode_prompt(tokenizer, messages, images, max_pixels=cfg.max_pixels)
    except (TemplateError, ImageError) as e:
        raise RequestError(str(e), param="messages") from e
    if len(prompt.token_ids) > cfg.max_prompt_tokens:
        raise RequestError(
            f"prompt is {len(prompt.token_ids)} tokens; this server accepts at most {cfg.max_prompt_tokens}",
            param="messages",
            code="context_length_exceeded",
        )
    return prompt, params


# --- Batching --------------------------------------------------------------------------------------------


class BatchWorker:
    """One thread that runs queued requests through the sampler, grouping those that arrive together."""

    def __init__(self, sampler: Sampler, cfg: ServeConfig):
        self.sampler, self.cfg = sampler, cfg
        self.queue: queue.Queue[tuple[Prompt, SamplingParams, Future]] = queue.Queue()
        self.batches: list[int] = []  # requests per sampler call (for tests and logs)
        self.thread = threading.Thread(target=self._loop, name="sampler", daemon=True)
        self.thread.start()

    def submit(self, prompt: Prompt, params: SamplingParams) -> Future:
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


# --- HTTP ------------------------------------------------------------------------------------------------


def make_server(
    sampler: Sampler,
    tokenizer: PreTrainedTokenizerFast,
    cfg: ServeConfig = ServeConfig(),
    host: str = "127.0.0.1",
    port: int = 8000,
) -> ThreadingHTTPServer:
    """The HTTP server (not started: call `serve_forever`, e.g. in a thread). `port=0` picks a free port."""
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
            kind = "invalid_request_error" if e.status < 500 else "server_error"
            self._send(e.status, {"error": {"message": str(e), "type": kind, "param": e.param, "code": e.code}})

        def do_GET(self) -> None:  # noqa: N802  (http.server naming)
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(
                    200,
                    {
                        "object": "list",
                        "data": [{"id": cfg.model_name, "object": "model", "created": 0, "owned_by": "octomed-jax"}],
                    },
                )
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
            texts = tokenizer.batch_decode([c.token_ids for c in completions], skip_special_tokens=True)
            completion_tokens = sum(c.num_tokens for c in completions)
            self._send(
                200,
                {
                    "id": f"chatcmpl-{uuid.uuid4().hex}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": cfg.model_name,
                    "choices": [
                        {
                            "index": i,
                            "message": {"role": "assistant", "content": t},
                            "finish_reason": c.finish_reason,
                            "logprobs": None,
                        }
                        for i, (t, c) in enumerate(zip(texts, completions, strict=True))
                    ],
                    "usage": {
                        "prompt_tokens": len(prompt.token_ids),
                        "completion_tokens": completion_tokens,
                        "total_tokens": len(prompt.token_ids) + completion_tokens,
                    },
                },
            )

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.worker = worker  # type: ignore[attr-defined]
    return server


# --- CLI -------------------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags (only when run as a program, so importing this module is side-effect free)."""
    flags.DEFINE_string("checkpoint", None, "Our checkpoint folder or a Hugging Face checkpoint folder.")
    flags.DEFINE_string("host", "127.0.0.1", "Address to bind (loopback by default; 0.0.0.0 exposes the model).")
    flags.DEFINE_integer("port", 8000, "Port.")
    flags.DEFINE_string("model_name", "octomed-jax", "Model id reported to clients.")
    flags.DEFINE_string("mesh", "", "Mesh shape, e.g. 'tensor=-1'; empty: one device.")
    flags.DEFINE_string("dtype", "", "Compute dtype (e.g. bfloat16); empty keeps the checkpoint's.")
    flags.DEFINE_string("tokenizer", "", "Tokenizer folder; default: the checkpoint's, else the bundled Qwen files.")
    flags.DEFINE_integer("max_batch", 32, "Most rows per sampler call.")
    flags.DEFINE_integer("batch_wait_ms", 10, "How long to wait for more requests to batch together.")
    flags.DEFINE_integer("max_request_mb", 32, "Largest request body, MiB.")
    flags.DEFINE_integer("max_image_pixels", 4096 * 4096, "Largest accepted image, in pixels (width x height).")
    flags.DEFINE_integer("max_images", 10, "Most images per request.")
    flags.DEFINE_integer("max_pixels", 262_144, "Images are resized to at most this many pixels for the model.")
    flags.DEFINE_integer("max_tokens_limit", 8192, "Largest max_tokens a request may ask for.")
    flags.DEFINE_integer("default_max_tokens", 1024, "max_tokens when a request gives none.")
    flags.DEFINE_bool("allow_remote_images", False, "Fetch http(s):// image URLs (off: refused).")
    flags.DEFINE_bool("allow_file_images", False, "Read file:// image URLs from local disk (off: refused).")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.checkpoint:
        raise app.UsageError("--checkpoint is required")
    from octomed_jax.generation.loading import load_checkpoint, load_checkpoint_tokenizer, parse_mesh
    from octomed_jax.generation.sampler import Sampler

    mesh = parse_mesh(FLAGS.mesh)
    model = load_checkpoint(FLAGS.checkpoint, mesh=mesh, dtype=FLAGS.dtype or None)
    tokenizer = load_checkpoint_tokenizer(FLAGS.checkpoint, FLAGS.tokenizer or None)
    cfg = ServeConfig(
        model_name=FLAGS.model_name,
        max_request_bytes=FLAGS.max_request_mb * 2**20,
        max_image_pixels=FLAGS.max_image_pixels,
        max_images=FLAGS.max_images,
        max_pixels=FLAGS.max_pixels,
        max_tokens_limit=FLAGS.max_tokens_limit,
        default_max_tokens=FLAGS.default_max_tokens,
        allow_remote_images=FLAGS.allow_remote_images,
        allow_file_images=FLAGS.allow_file_images,
        max_batch=FLAGS.max_batch,
        batch_wait_s=FLAGS.batch_wait_ms / 1000,
    )
    server = make_server(Sampler(model, mesh=mesh, max_batch=FLAGS.max_batch), tokenizer, cfg, FLAGS.host, FLAGS.port)
    if FLAGS.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"[serve] WARNING: listening on {FLAGS.host}: anyone who can reach this address can use the model")
    print(f"[serve] {FLAGS.checkpoint} at http://{FLAGS.host}:{server.server_address[1]}/v1/chat/completions")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        print(f"[serve] stopped after {len(server.worker.batches)} sampler call(s)")  # type: ignore[attr-defined]


if __name__ == "__main__":
    define_flags()
    app.run(main)
