"""The OpenAI-compatible chat server as a library: `python -m octomed_jax.serve` only parses flags and calls it.

- `openai_api.py`: `ServeConfig`, `RequestError`, `parse_request` (validation, THE chat template), response shapes.
- `server.py`: `BatchWorker` (batches concurrent requests into sampler calls), `make_server`, `serve`.
- `loading.py`: `load_for_serving(checkpoint, ...)`, the model and tokenizer the server runs.
"""

from octomed_jax.serving.loading import ServingModel, load_for_serving
from octomed_jax.serving.openai_api import RequestError, ServeConfig, parse_messages, parse_request
from octomed_jax.serving.server import BatchWorker, make_server, serve

__all__ = [
    "BatchWorker",
    "RequestError",
    "ServeConfig",
    "ServingModel",
    "load_for_serving",
    "make_server",
    "parse_messages",
    "parse_request",
    "serve",
]
