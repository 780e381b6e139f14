"""CLI: an OpenAI-compatible chat server over a checkpoint (the logic lives in `octomed_jax/serving/`).

    python -m octomed_jax.serve --checkpoint=PATH --host=127.0.0.1 --port=8000

`POST /v1/chat/completions` takes OpenAI chat messages (text, and images as base64 `data:` URLs), `n`,
`temperature`, `top_p`, `max_tokens` (or `max_completion_tokens`), `seed`, and answers with choices and
token usage, or with `stream=true` OpenAI's server-sent events token by token; `GET /v1/models` lists the
model and `GET /health` reports the queue. Requests past the queue bound get 503 with Retry-After. The
server binds 127.0.0.1 unless told otherwise, refuses `http(s)://` and `file://` image URLs unless
`--allow_remote_images` / `--allow_file_images` are set, and answers bad input with a 4xx JSON error in
OpenAI's shape. Flags are defined only when run as a program.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags

from octomed_jax.serving import ServeConfig, ServingModel


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines the server's command-line flags on `flag_values`."""
    fv = flag_values
    flags.DEFINE_string("checkpoint", None, "A training step or workdir, our model folder or an HF folder; its run "
                        "contract gives the system prompt, image pixel bounds and stop ids.", flag_values=fv)
    flags.DEFINE_string("host", "127.0.0.1", "Address to bind (loopback by default; 0.0.0.0 exposes the model).",
                        flag_values=fv)
    flags.DEFINE_integer("port", 8000, "Port.", flag_values=fv)
    flags.DEFINE_string("model_name", "octomed-jax", "Model id reported to clients.", flag_values=fv)
    flags.DEFINE_string("mesh", "", "Mesh shape, e.g. 'tensor=-1'; empty: one device.", flag_values=fv)
    flags.DEFINE_string("dtype", "", "Compute dtype (e.g. bfloat16); empty keeps the checkpoint's.", flag_values=fv)
    flags.DEFINE_string("tokenizer", "", "Tokenizer folder; default: the run contract's.", flag_values=fv)
    flags.DEFINE_integer("max_batch", 32, "Most rows per sampler call.", flag_values=fv)
    flags.DEFINE_integer("max_batch_tokens", 262_144, "Most token slots (rows x (prompt + max_tokens), padded) per "
                         "sampler call.", flag_values=fv)
    flags.DEFINE_integer("max_batch_patches", 16_384, "Most image patches per sampler call (and per request).",
                         flag_values=fv)
    flags.DEFINE_integer("max_queue", 256, "Most requests waiting for the sampler; beyond: 503 with Retry-After.",
                         flag_values=fv)
    flags.DEFINE_integer("max_connections", 1024, "Most open connections; beyond: 503.", flag_values=fv)
    flags.DEFINE_integer("max_messages", 512, "Most messages per request.", flag_values=fv)
    flags.DEFINE_float("header_timeout_s", 10.0, "Close a connection whose request head takes longer.", flag_values=fv)
    flags.DEFINE_float("body_timeout_s", 30.0, "Answer 408 to a request body that takes longer.", flag_values=fv)
    flags.DEFINE_integer("batch_wait_ms", 10, "How long to wait for more requests to batch together.", flag_values=fv)
    flags.DEFINE_integer("max_request_mb", 32, "Largest request body, MiB.", flag_values=fv)
    flags.DEFINE_integer("max_image_pixels", 4096 * 4096, "Largest accepted image, in pixels (width x height).",
                         flag_values=fv)
    flags.DEFINE_integer("max_images", 10, "Most images per request.", flag_values=fv)
    flags.DEFINE_integer("max_tokens_limit", 8192, "Largest max_tokens a request may ask for.", flag_values=fv)
    flags.DEFINE_integer("default_max_tokens", 1024, "max_tokens when a request gives none.", flag_values=fv)
    flags.DEFINE_bool("allow_remote_images", False, "Fetch http(s):// image URLs (off: refused).", flag_values=fv)
    flags.DEFINE_bool("allow_file_images", False, "Read file:// image URLs from local disk (off: refused).",
                      flag_values=fv)


def serve_config(fv: flags.FlagValues, loaded: ServingModel) -> ServeConfig:
    """The `ServeConfig` of the loaded run (prompting, preprocessing, stop ids) with the limits the flags set."""
    return loaded.serve_config(
        model_name=fv.model_name,
        max_request_bytes=fv.max_request_mb * 2**20,
        max_image_pixels=fv.max_image_pixels,
        max_images=fv.max_images,
        max_tokens_limit=fv.max_tokens_limit,
        default_max_tokens=fv.default_max_tokens,
        allow_remote_images=fv.allow_remote_images,
        allow_file_images=fv.allow_file_images,
        max_batch=fv.max_batch,
        max_batch_tokens=fv.max_batch_tokens,
        max_batch_patches=fv.max_batch_patches,
        max_queue=fv.max_queue,
        max_connections=fv.max_connections,
        max_messages=fv.max_messages,
        header_timeout_s=fv.header_timeout_s,
        body_timeout_s=fv.body_timeout_s,
        batch_wait_s=fv.batch_wait_ms / 1000,
    )


def main(argv: Sequence[str]) -> None:
    fv = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not fv.checkpoint:
        raise app.UsageError("--checkpoint is required")
    from octomed_jax.serving import load_for_serving, serve
    from octomed_jax.sharding import parse_mesh

    mesh = parse_mesh(fv.mesh)
    try:
        loaded = load_for_serving(fv.checkpoint, mesh=mesh, dtype=fv.dtype or None,
                                  tokenizer_path=fv.tokenizer or None)
    except (FileNotFoundError, ValueError) as e:  # a bad path, a damaged checkpoint or contract: named in `e`
        raise SystemExit(f"serve: error: {e}") from None
    serve(loaded.model, loaded.tokenizer, serve_config(fv, loaded), host=fv.host, port=fv.port, mesh=mesh)


if __name__ == "__main__":
    define_flags(flags.FLAGS)
    app.run(main)
