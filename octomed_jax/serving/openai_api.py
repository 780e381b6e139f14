"""The OpenAI chat-completions surface: server limits, request validation, and response shapes.

`read_json` reads a body strictly (no `NaN` / `Infinity`, bounded nesting); `parse_request` turns a
`POST /v1/chat/completions` body (text, and images as base64 `data:` URLs; `n`, `temperature`, `top_p`, `top_k`,
`max_tokens` or `max_completion_tokens`, `seed`) into a `Prompt` through THE chat template and `SamplingParams`;
`stream_settings` reads `stream` and `stream_options`. Anything refused raises `RequestError`, which carries the
HTTP status and becomes OpenAI's error shape (`error_body`). The cheap limits come first: parameters, the number
of messages, the text length and the images' count, pixels and patches (read from their headers) are checked
before any image is decoded or the template runs. `http(s)://` and `file://` image URLs are refused unless
`ServeConfig` allows them. Nothing here knows about HTTP transport or threads (`serving/server.py`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import math
import time
import urllib.request
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from octomed_jax.data.images import MERGE_SIZE, MIN_PIXELS, OCTOMED_MAX_PIXELS, PATCH_SIZE, image_grid_thw
from octomed_jax.generation.sampler import DEFAULT_STOP_IDS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from octomed_jax.generation.sampler import Completion, Prompt, SamplingParams


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Limits and switches of the server.

    Attributes:
      model_name: the id `/v1/models` reports.
      max_request_bytes: largest request body.
      max_image_pixels: largest image (width x height, read from the header before decoding).
      max_images: most images per request.
      max_request_pixels: most pixels of all a request's images together (decoding cost).
      max_messages: most messages per request.
      max_text_chars: most characters of text per request, checked before the template runs (a prompt of
        `max_prompt_tokens` tokens is far shorter in practice).
      min_pixels, max_pixels: the resized image area's bounds (the run contract's; OctoMed: at most 512 x 512).
      image_family: the run's image options beyond the pixel bounds (`Preprocessing.image_options`: the family's
        patch sizes and normalisation; InternVL: its tile side and the run's `max_tiles`), as (name, value)
        pairs; empty: Qwen2.5-VL's.
      system_prompt: the system message put first when a request carries none; None leaves it to the chat
        template (Qwen2.5-VL's default "You are a helpful assistant."; none for Qwen3-VL and InternVL).
      template: the chat template's name (the run contract's `prompting.template`); None: the tokenizer's.
      stop_ids: token ids that end a completion (the run contract's special ids).
      max_prompt_tokens: longest prompt after the template.
      max_tokens_limit: largest `max_tokens` a request may ask for.
      default_max_tokens: `max_tokens` when the request gives none.
      max_n: largest `n`.
      allow_remote_images: fetch `http(s)://` image URLs.
      allow_file_images: read `file://` image URLs from this machine's disk.
      max_batch: most rows (samples) per sampler call.
      max_batch_tokens: most token slots per sampler call: rows x (prompt + budget), padded to the sampler's
        buckets (the KV cache's size); a request that needs more alone is refused.
      max_batch_patches: most image patches per sampler call (the vision tower sees a batch's images
        together); a request with more alone is refused.
      batch_wait_s: how long the worker waits for more requests to batch with the first.
      max_queue: most requests waiting for the sampler; beyond it, 503 with Retry-After.
      retry_after_s: the Retry-After a refused request is given, seconds.
      stream_chunk_tokens: decoding steps between two streamed pieces.
      max_connections: most open connections and requests at once (uvicorn's `limit_concurrency`; 503 beyond).
      backlog: the listen socket's backlog.
      header_timeout_s: a connection that has not sent a whole request head within this is closed.
      body_timeout_s: a body not received whole within this is answered 408.
      keep_alive_s: an idle keep-alive connection is closed after this.
    """

    model_name: str = "octomed-jax"
    max_request_bytes: int = 32 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_images: int = 10
    max_request_pixels: int = 4 * 4096 * 4096
    max_messages: int = 512
    max_text_chars: int = 1_000_000
    min_pixels: int = MIN_PIXELS
    max_pixels: int = OCTOMED_MAX_PIXELS
    image_family: tuple[tuple[str, Any], ...] = ()
    system_prompt: str | None = None
    template: str | None = None
    stop_ids: tuple[int, ...] = DEFAULT_STOP_IDS
    max_prompt_tokens: int = 16_384
    max_tokens_limit: int = 8192
    default_max_tokens: int = 1024
    max_n: int = 16
    allow_remote_images: bool = False
    allow_file_images: bool = False
    max_batch: int = 32
    max_batch_tokens: int = 262_144
    max_batch_patches: int = 16_384
    batch_wait_s: float = 0.01
    max_queue: int = 256
    retry_after_s: int = 1
    stream_chunk_tokens: int = 8
    max_connections: int = 1024
    backlog: int = 2048
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0


class RequestError(Exception):
    """A request the server refuses: HTTP status, message, the offending parameter, and for 429 / 503 the
    seconds after which to retry."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        param: str | None = None,
        code: str = "invalid_request",
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.status, self.param, self.code, self.retry_after = status, param, code, retry_after


def _refuse_constant(name: str) -> Any:
    raise RequestError(f"request body holds {name}, which is not JSON; numbers must be finite")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RequestError(f"request body holds the number {text}, which is out of range; numbers must be finite")
    return value


def read_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, read strictly.

    Raises:
      RequestError (400): not UTF-8 JSON, not an object, `NaN` / `Infinity` or a number out of float range,
        integers too long to read, or nesting too deep to read.
    """
    try:
        req = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise RequestError("request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, and integers beyond Python's digit limit
        raise RequestError(f"request body is not valid JSON: {e}") from None
    if not isinstance(req, dict):
        raise RequestError("request body must be a JSON object")
    return req


def stream_settings(req: dict[str, Any]) -> tuple[bool, bool]:
    """(`stream`, `stream_options.include_usage`) of a request, each a checked boolean."""
    stream = req.get("stream") or False
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be a boolean", param="stream")
    options = req.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", param="stream_options")
    usage = options.get("include_usage") or False
    if not isinstance(usage, bool):
        raise RequestError("'stream_options.include_usage' must be a boolean", param="stream_options")
    if options and not stream:
        raise RequestError("'stream_options' is only allowed with stream=true", param="stream_options")
    return stream, usage


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


def _image_size(data: bytes, where: str) -> tuple[int, int]:
    """(width, height) from an image's header, nothing decoded."""
    import PIL.Image

    try:
        with PIL.Image.open(io.BytesIO(data)) as im:
            return im.size
    except PIL.Image.DecompressionBombError as e:
        raise RequestError(f"{where}: image too large: {e}", 413, where, "image_too_large") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise RequestError(f"{where}: cannot read the image: {e}", param=where, code="invalid_image") from e


def _checked_images(urls: Sequence[tuple[str, str]], cfg: ServeConfig) -> list[bytes]:
    """The bytes of a request's images, each and all together within the pixel and patch limits (headers only)."""
    images, pixels, patches = [], 0, 0
    for url, where in urls:
        data = _image_bytes(url, cfg, where)
        width, height = _image_size(data, where)
        if width * height > cfg.max_image_pixels:
            raise RequestError(
                f"{where}: image is {width}x{height} = {width * height / 1e6:.1f} megapixels; this server accepts "
                f"at most {cfg.max_image_pixels / 1e6:.1f}",
                413,
                where,
                "image_too_large",
            )
        try:
            family = dict(cfg.image_family)
            patch = family.get("patch_size", PATCH_SIZE)
            if family.get("tile_size"):  # InternVL: whole tiles (and a thumbnail) of the tower's side
                from octomed_jax.data.internvl_images import num_tiles

                tiles = num_tiles(height, width, tile_size=family["tile_size"], max_tiles=family["max_tiles"])
                image_patches = tiles * (family["tile_size"] // patch) ** 2
            else:
                image_patches = int(image_grid_thw(height, width, min_pixels=cfg.min_pixels,
                                                   max_pixels=cfg.max_pixels, patch_size=patch,
                                                   merge_size=family.get("merge_size", MERGE_SIZE)).prod())
        except ValueError as e:
            raise RequestError(f"{where}: {e}", param=where, code="invalid_image") from e
        pixels += width * height
        patches += image_patches
        if pixels > cfg.max_request_pixels:
            raise RequestError(
                f"the request's images hold {pixels / 1e6:.1f} megapixels together; this server accepts at most "
                f"{cfg.max_request_pixels / 1e6:.1f}",
                413,
                where,
                "image_too_large",
            )
        if patches > cfg.max_batch_patches:
            raise RequestError(
                f"the request's images make {patches} patches once resized; this server runs at most "
                f"{cfg.max_batch_patches} at once",
                413,
                where,
                "image_too_large",
            )
        images.append(data)
    return images


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def parse_messages(raw: Any, cfg: ServeConfig) -> tuple[list[dict[str, Any]], list[bytes]]:
    """OpenAI messages -> template messages (`{"type": "image"}` items) and the image bytes, in order.

    The messages' count, shape and text length are checked before any image is read; images are checked from
    their headers (`_checked_images`). `cfg.system_prompt`, when set, is put first if the request's first
    message is not a system message.
    """
    if not isinstance(raw, list) or not raw:
        raise RequestError("'messages' must be a non-empty list", param="messages")
    if len(raw) > cfg.max_messages:
        raise RequestError(
            f"'messages' holds {len(raw)} messages; this server accepts at most {cfg.max_messages}", param="messages"
        )
    messages: list[dict[str, Any]] = []
    urls: list[tuple[str, str]] = []
    chars = 0
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = m.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise RequestError(
                f"messages[{i}].role {role!r} is not supported; use one of {sorted(_ROLES)}",
                param=f"messages[{i}].role",
            )
        content = m.get("content")
        if isinstance(content, str):
            chars += len(content)
            messages.append({"role": _ROLES[role], "content": content})
        elif isinstance(content, list):
            parts: list[dict[str, Any]] = []
            for j, part in enumerate(content):
                where = f"messages[{i}].content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    chars += len(part["text"])
                    parts.append({"type": "text", "text": part["text"]})
                elif kind == "image_url":
                    if role != "user":
                        raise RequestError(f"{where}: images are only accepted in user messages", param=where)
                    image_url = part.get("image_url")
                    url = image_url.get("url") if isinstance(image_url, dict) else image_url
                    if not isinstance(url, str):
                        raise RequestError(f"{where}: image_url.url must be a string", param=where)
                    if len(urls) >= cfg.max_images:
                        raise RequestError(f"more than {cfg.max_images} images in one request", param=where)
                    urls.append((url, where))
                    parts.append({"type": "image"})
                else:
                    raise RequestError(
                        f"{where}: unsupported content part type {kind!r} (use text or image_url)", param=where
                    )
            messages.append({"role": _ROLES[role], "content": parts})
        else:
            raise RequestError(f"messages[{i}].content must be a string or a list of parts", param=f"messages[{i}]")
        if chars > cfg.max_text_chars:
            raise RequestError(
                f"the messages hold more than {cfg.max_text_chars} characters of text; this server accepts prompts "
                f"of at most {cfg.max_prompt_tokens} tokens",
                param="messages",
                code="context_length_exceeded",
            )
    images = _checked_images(urls, cfg)
    if cfg.system_prompt is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    return messages, images


def _number(body: dict[str, Any], name: str, default: Any, kind: type, lo: float, hi: float) -> Any:
    value = body.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"'{name}' must be a {kind.__name__}, got {type(value).__name__}", param=name)
    if not lo <= value <= hi:  # before any conversion: a huge integer must not become an infinite float
        raise RequestError(f"'{name}' must be between {lo} and {hi}, got {str(value)[:24]}", param=name)
    if kind is int and int(value) != value:
        raise RequestError(f"'{name}' must be an integer, got {value}", param=name)
    return kind(value)


def parse_request(
    body: bytes | dict[str, Any], cfg: ServeConfig, tokenizer: PreTrainedTokenizerFast
) -> tuple[Prompt, SamplingParams]:
    """Validates a chat completion request and turns it into a prompt and sampling settings.

    Args:
      body: the request body, or the object `read_json` made of it.
      cfg: the server's limits and prompting.
      tokenizer: the tokenizer the template encodes with.

    Raises:
      RequestError: anything the server refuses, with the status to answer.
    """
    from octomed_jax.data.images import ImageError
    from octomed_jax.data.template import TemplateError
    from octomed_jax.generation.prompts import encode_prompt
    from octomed_jax.generation.sampler import SamplingParams

    req = read_json(body) if isinstance(body, (bytes, bytearray, str)) else body
    stream_settings(req)
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
    messages, images = parse_messages(req.get("messages"), cfg)
    try:
        prompt = encode_prompt(tokenizer, messages, images, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels,
                               template=cfg.template, **dict(cfg.image_family))
    except (TemplateError, ImageError) as e:
        raise RequestError(str(e), param="messages") from e
    if len(prompt.token_ids) > cfg.max_prompt_tokens:
        raise RequestError(
            f"prompt is {len(prompt.token_ids)} tokens; this server accepts at most {cfg.max_prompt_tokens}",
            param="messages",
            code="context_length_exceeded",
        )
    return prompt, params


def error_body(e: RequestError) -> dict[str, Any]:
    """OpenAI's error object for a refused request."""
    kind = "invalid_request_error" if e.status < 500 else "server_error"
    return {"error": {"message": str(e), "type": kind, "param": e.param, "code": e.code}}


def models_body(cfg: ServeConfig) -> dict[str, Any]:
    """The `/v1/models` listing: the one model this server runs."""
    model = {"id": cfg.model_name, "object": "model", "created": 0, "owned_by": "octomed-jax"}
    return {"object": "list", "data": [model]}


def completion_body(
    prompt: Prompt, completions: Sequence[Completion], tokenizer: PreTrainedTokenizerFast, cfg: ServeConfig
) -> dict[str, Any]:
    """A `chat.completion` object: one choice per sample (special tokens dropped) and the token usage."""
    texts = tokenizer.batch_decode([c.token_ids for c in completions], skip_special_tokens=True)
    return {
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
        "usage": usage_body(prompt, completions),
    }


def chunk_body(
    request_id: str, created: int, cfg: ServeConfig, choices: list[dict[str, Any]], usage: dict[str, int] | None = None
) -> dict[str, Any]:
    """One `chat.completion.chunk` of a stream: choice deltas, or (with `choices` empty) the usage."""
    body = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": cfg.model_name,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def usage_body(prompt: Prompt, completions: Sequence[Completion]) -> dict[str, int]:
    """Token usage of a request: its prompt and every sample's tokens, stop tokens included."""
    completion_tokens = sum(c.num_tokens for c in completions)
    return {
        "prompt_tokens": len(prompt.token_ids),
        "completion_tokens": completion_tokens,
        "total_tokens": len(prompt.token_ids) + completion_tokens,
    }


__all__ = [
    "RequestError",
    "ServeConfig",
    "chunk_body",
    "completion_body",
    "error_body",
    "models_body",
    "parse_messages",
    "parse_request",
    "read_json",
    "stream_settings",
    "usage_body",
]
