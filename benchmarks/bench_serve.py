"""The chat server under load: 64 concurrent clients on the tiny model, ASGI server vs the former http.server one.

  python benchmarks/bench_serve.py [--clients=64 --seconds=20 --max_tokens=16 --max_batch=32]

Both servers run the same model, tokenizer and sampler settings on 127.0.0.1, one after the other, each after a
warm-up round that compiles the sampler's shapes. Each client (a thread in a separate process, so the load does
not share the servers' interpreter) opens a new connection per request and posts a short greedy chat request
until the time is up. Prints per server: completed and failed requests (with the failures' kinds), p50 / p99
latency of the completed ones, and completion tokens/s. The former server (`http.server`, listen backlog 5) is
read from git history at `LEGACY_COMMIT` into a temporary module: it lives nowhere in the package.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import http.client
import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

LEGACY_COMMIT = "3500c6d13ec1186711da53875e34f5a2bc40f125"  # the last octomed_jax/serving/server.py on http.server
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_request(port: int, body: bytes) -> tuple[str, float, int]:
    start = time.perf_counter()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        conn.close()
    except OSError as e:
        return type(e).__name__, time.perf_counter() - start, 0
    if r.status != 200:
        return f"HTTP {r.status}", time.perf_counter() - start, 0
    return "ok", time.perf_counter() - start, json.loads(data)["usage"]["completion_tokens"]


def _load(port: int, clients: int, seconds: float, max_tokens: int) -> list[tuple[str, float, int]]:
    """`clients` threads posting until `seconds` have passed; every request's (outcome, latency, tokens)."""
    deadline = time.perf_counter() + seconds
    results: list[tuple[str, float, int]] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        k = 0
        while time.perf_counter() < deadline:
            messages = [{"role": "user", "content": f"Client {i}, question {k}: which organ makes insulin?"}]
            body = json.dumps({"messages": messages, "temperature": 0, "max_tokens": max_tokens}).encode()
            out = _one_request(port, body)
            with lock:
                results.append(out)
            k += 1

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return results


def _report(name: str, results: list[tuple[str, float, int]], seconds: float) -> None:
    ok = [r for r in results if r[0] == "ok"]
    failed = collections.Counter(r[0] for r in results if r[0] != "ok")
    lat = np.array([r[1] for r in ok]) if ok else np.array([np.nan])
    tokens = sum(r[2] for r in ok)
    print(
        f"{name:>12}: completed {len(ok):5d}  failed {sum(failed.values()):4d} {dict(failed) or ''}  "
        f"p50 {np.percentile(lat, 50):6.2f} s  p99 {np.percentile(lat, 99):6.2f} s  {tokens / seconds:8.1f} tokens/s"
    )


def _legacy_module() -> Any:
    """The former server module, from git history, as a temporary module."""
    source = subprocess.run(
        ["git", "show", f"{LEGACY_COMMIT}:octomed_jax/serving/server.py"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    path = os.path.join(tempfile.mkdtemp(), "legacy_server.py")
    with open(path, "wb") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("legacy_server", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--max_tokens", type=int, default=16)
    p.add_argument("--max_batch", type=int, default=32)
    args = p.parse_args()

    from octomed_jax.data.tokenizer import default_tokenizer_dir, load_tokenizer
    from octomed_jax.generation.sampler import Sampler
    from octomed_jax.models.config import get_preset
    from octomed_jax.models.qwen2_5_vl import init_model
    from octomed_jax.serving import ServeConfig, start_server

    model = init_model(get_preset("tiny"), seed=0)
    tokenizer = load_tokenizer(default_tokenizer_dir())
    cfg = ServeConfig(max_batch=args.max_batch, batch_wait_s=0.01)
    pool = multiprocessing.get_context("spawn").Pool(1)  # the load, outside this interpreter
    print(f"{args.clients} clients x {args.seconds:.0f} s, max_tokens {args.max_tokens}, tiny model, 127.0.0.1")

    def run(name: str, port: int) -> None:
        pool.apply(_load, (port, args.clients, 3.0, args.max_tokens))  # warm-up: compile the batch shapes
        results = pool.apply(_load, (port, args.clients, args.seconds, args.max_tokens))
        _report(name, results, args.seconds)

    legacy = _legacy_module()
    sampler = Sampler(model, max_batch=cfg.max_batch, stop_token_ids=cfg.stop_ids)
    old = legacy.make_server(sampler, tokenizer, cfg, "127.0.0.1", 0)
    threading.Thread(target=old.serve_forever, daemon=True).start()
    try:
        run("http.server", old.server_address[1])
    finally:
        old.shutdown()
        old.server_close()
    with start_server(Sampler(model, max_batch=cfg.max_batch, stop_token_ids=cfg.stop_ids), tokenizer, cfg) as srv:
        run("uvicorn", srv.port)
    pool.close()


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
