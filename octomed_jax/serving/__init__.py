"""The OpenAI-compatible chat server as a library: `python -m octomed_jax.serve` only parses flags and calls it.

- `openai_api.py`: `ServeConfig`, `RequestError`, `parse_request` (validation, THE chat template), response shapes.
- `server.py`: `BatchWorker` (bounded queue; batches bounded by rows, tokens and patches), `make_app` (ASGI:
  Starlette, SSE streaming), `start_server` (uvicorn in a thread), `serve`.
- `loading.py`: `load_for_serving(checkpoint, ...)`, the model and tokenizer the server runs.
"""

from octomed_jax.serving.loading import ServingModel, load_for_serving
from octomed_jax.serving.openai_api import RequestError, ServeConfig, parse_messages, parse_request
from octomed_jax.serving.server import BatchWorker, RunningServer, make_app, serve, start_server

__all__ = [
    "BatchWorker",
    "RequestError",
    "RunningServer",
    "ServeConfig",
    "ServingModel",
    "load_for_serving",
    "make_app",
    "parse_messages",
    "parse_request",
    "serve",
    "start_server",
]
