"""The OpenAI chat-completions surface: server limits, request validation, and response shapes.

`parse_request` turns a `POST /v1/chat/completions` body (text, and images as base64 `data:` URLs; `n`,
`temperature`, `top_p`, `top_k`, `max_tokens` or `max_completion_tokens`, `seed`) into a `Prompt` through
THE chat template and `SamplingParams`. Anything refused raises `RequestError`, which carries the HTTP status
and becomes OpenAI's error shape (`error_body`). `http(s)://` and `file://` image URLs are refused unless
`ServeConfig` allows them; images are bounded in number and in pixels (read from the header, before decoding).
Nothing here knows about HTTP transport or threads (`serving/server.py`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import time
import urllib.request
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from octomed_jax.data.images import MIN_PIXELS, OCTOMED_MAX_PIXELS
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
      min_pixels, max_pixels: the resized image area's bounds (the run contract's; OctoMed: at most 512 x 512).
      system_prompt: the system message put first when a request carries none; None leaves it to the chat
        template (Qwen's default "You are a helpful assistant.").
      stop_ids: token ids that end a completion (the run contract's special ids).
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
    min_pixels: int = MIN_PIXELS
    max_pixels: int = OCTOMED_MAX_PIXELS
    system_prompt: str | None = None
    stop_ids: tuple[int, ...] = DEFAULT_STOP_IDS
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
    """OpenAI messages -> template messages (`{"type": "image"}` items) and the image bytes, in order.

    `cfg.system_prompt`, when set, is put first if the request's first message is not a system message.
    """
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
    if cfg.system_prompt is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": cfg.system_prompt})
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
        prompt = encode_prompt(tokenizer, messages, images, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
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
    completion_tokens = sum(c.num_tokens for c in completions)
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
        "usage": {
            "prompt_tokens": len(prompt.token_ids),
            "completion_tokens": completion_tokens,
            "total_tokens": len(prompt.token_ids) + completion_tokens,
        },
    }


__all__ = [
    "RequestError",
    "ServeConfig",
    "completion_body",
    "error_body",
    "models_body",
    "parse_messages",
    "parse_request",
]
