"""The attention kernels at the student's shapes: forward + backward time, compiler memory and error, beside xla.

  python benchmarks/bench_attention.py          # this device's kernels, bf16, 8192-slot packed rows
  python benchmarks/bench_attention.py --smoke  # CPU: small rows, the Pallas kernels in interpret mode

Two shapes, as the 7B student runs them (`model.attention_impl`, `octomed_jax.models.attention`): a language
layer (28 query / 4 key-value heads of 128, causal within each packed example of ~`--example_tokens`) and a
vision full-attention block (16 heads of 80, full attention within each image of half to all of
`--image_patches`, the largest frame `recipe.images.max_pixels` allows: 1,336). Each row ends in padding
(segment 0). Every kernel of the platform runs the same inputs in one process: `xla` (the masked reference,
in the compute dtype), `cudnn` (mask as bias) and `pallas_gpu` on GPU; `splash` on TPU; the Pallas kernels
in interpret mode on CPU. The vision shape runs each kernel twice: over the whole row under the image mask,
and "+bins" within bins of whole images (`attention.image_attention`, `positions.image_bins`), as packed
training rows do. Per kernel: the compiled forward + backward's time and its ratio to xla's, the compiler's
temporary bytes, and each output's error (max |x - ref| over max |ref|, on the real slots) against xla over
the row in fp32: the output and the gradients of q, k and v under a fixed random cotangent (0 on padding).
A kernel that fails to compile or run prints its error and the others go on.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from octomed_jax.models import attention, positions
from octomed_jax.models.config import get_preset

SHAPES = {
    "text": dict(heads=28, kv_heads=4, head_dim=128, causal=True),
    "vision": dict(heads=16, kv_heads=16, head_dim=80, causal=False),
}
KERNELS = {"gpu": ("xla", "cudnn", "pallas_gpu"), "tpu": ("xla", "splash"),
           "cpu": ("xla", "splash", "pallas_gpu")}
SMOKE = dict(seq=512, example_tokens=150, image_patches=60, steps=1)


def packed_segments(rows: int, seq: int, low: int, high: int, rng: np.random.Generator) -> np.ndarray:
    """Segment ids [rows, seq]: examples of `low`..`high` slots numbered 1, 2, ..., then padding (0)."""
    seg = np.zeros((rows, seq), np.int32)
    for r in range(rows):
        start, n = 0, 1
        while True:
            length = int(rng.integers(low, high + 1))
            if start + length > seq - 8:  # at least a few padding slots in every row
                break
            seg[r, start:start + length], start, n = n, start + length, n + 1
    return seg


def inputs(shape: dict[str, Any], args: argparse.Namespace) -> tuple[Any, ...]:
    """q, k, v (fp32), segment ids, the output's cotangent (0 on padding) and, for vision, the image bins."""
    rng = np.random.default_rng(0)
    b, t, h = args.rows, args.seq, shape["head_dim"]
    q, k, v = (rng.standard_normal((b, t, n, h), np.float32) for n in
               (shape["heads"], shape["kv_heads"], shape["kv_heads"]))
    if shape["causal"]:
        seg = packed_segments(b, t, args.example_tokens // 2, args.example_tokens * 3 // 2, rng)
    else:
        seg = packed_segments(b, t, args.image_patches // 2, args.image_patches, rng)
    cotangent = rng.standard_normal((b, t, shape["heads"], h), np.float32) * (seg > 0)[..., None, None]
    bin_shape = None if shape["causal"] else positions.image_bin_shape(t, args.image_patches)
    bins = np.stack([positions.image_bins(s, *bin_shape) for s in seg]) if bin_shape else None
    return q, k, v, seg, cotangent, bins


def forward_backward(impl: str, shape: dict[str, Any], args: argparse.Namespace, dtype: Any) -> Any:
    """jit(q, k, v, segment_ids, cotangent, bins) -> (output, (dq, dk, dv)) through kernel `impl` in `dtype`
    (the vision shape: within the bins if given, else over the row)."""
    cfg = get_preset("tiny", attention_impl=impl, attention_block_q=args.block_q, attention_block_kv=args.block_kv)

    def run(q, k, v, seg, cotangent, bins):
        def loss(q, k, v):
            if shape["causal"]:
                out = attention.self_attention(q, k, v, seg, causal=True, cfg=cfg)
            else:
                out = attention.image_attention(q, k, v, seg, bins, cfg)
            return jnp.sum(out.astype(jnp.float32) * cotangent), out

        (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
            *(x.astype(dtype) for x in (q, k, v)))
        return out, grads

    return jax.jit(run)


def relative_errors(got: Any, want: Any, real: np.ndarray) -> list[float]:
    """max |got - want| / max |want| on the real slots (`real` [B, T]) for the output and each gradient."""
    flat = lambda tree: [np.asarray(x, np.float32)[real] for x in jax.tree.leaves(tree)]  # noqa: E731
    return [float(np.max(np.abs(g - w)) / np.max(np.abs(w))) for g, w in zip(flat(got), flat(want), strict=True)]


def measure(impl: str, shape: dict[str, Any], args: argparse.Namespace, arrays: tuple[Any, ...],
            reference: Any, name: str) -> dict[str, Any]:
    """Compile, time and check one kernel (reported as `name`); a failure is returned as its error message."""
    impl_name, impl = name, impl
    try:
        compiled = forward_backward(impl, shape, args, jnp.dtype(args.dtype)).lower(*arrays).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        result = jax.block_until_ready(compiled(*arrays))  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.steps):
            result = compiled(*arrays)
        jax.block_until_ready(result)
        seconds = (time.perf_counter() - t0) / args.steps
    except Exception as e:  # noqa: BLE001  a kernel the platform cannot run is a finding, not the end
        return {"impl": impl_name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    real = np.asarray(arrays[3]) > 0
    return {"impl": impl_name, "seconds": seconds, "temp_bytes": temp,
            "errors": relative_errors(result, reference, real)}


def report(name: str, shape: dict[str, Any], args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    within = (f"causal within examples of {args.example_tokens // 2}-{args.example_tokens * 3 // 2}" if shape["causal"]
              else f"full within images of {args.image_patches // 2}-{args.image_patches}")
    print(f"\n{name}: {args.rows} x {args.seq} slots, {shape['heads']} q / {shape['kv_heads']} kv heads x "
          f"{shape['head_dim']}, {within}, {args.dtype}, forward + backward, mean of {args.steps}")
    base = next((r["seconds"] for r in results if r["impl"] == "xla" and "seconds" in r), None)
    print(f"{'kernel':<18}{'ms':>10}{'/ xla':>8}{'temp GB':>10}   error vs fp32 xla: out, dq, dk, dv")
    for r in results:
        if "error" in r:
            print(f"{r['impl']:<18}failed: {r['error']}")
            continue
        ratio = f"{r['seconds'] / base:.3f}" if base else "-"
        errors = ", ".join(f"{e:.1e}" for e in r["errors"])
        print(f"{r['impl']:<18}{r['seconds'] * 1e3:>10.2f}{ratio:>8}{r['temp_bytes'] / 1e9:>10.2f}   {errors}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--seq", type=int, default=8192)
    p.add_argument("--example_tokens", type=int, default=1100, help="mean packed example length (text)")
    p.add_argument("--image_patches", type=int, default=1336, help="the largest image in patches (vision)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--block_q", type=int, default=128)
    p.add_argument("--block_kv", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--kernels", default="", help="comma-separated; default: the platform's")
    p.add_argument("--shapes", default="text,vision")
    p.add_argument("--smoke", action="store_true", help="small rows (CPU smoke test)")
    args = p.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    platform = jax.default_backend()
    kernels = args.kernels.split(",") if args.kernels else KERNELS.get(platform, ("xla",))
    print(f"device: {jax.devices()[0].device_kind}; jax {jax.__version__}; kernels {', '.join(kernels)}")
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        *arrays, bins = (None if x is None else jnp.asarray(x) for x in inputs(shape, args))
        whole = (*arrays, None)
        reference = jax.block_until_ready(forward_backward("xla", shape, args, jnp.float32)(*whole))
        results = [measure(impl, shape, args, whole, reference, impl) for impl in kernels]
        if bins is not None:
            results += [measure(impl, shape, args, (*arrays, bins), reference, f"{impl} +bins") for impl in kernels]
        report(name, shape, args, results)


if __name__ == "__main__":
    main()
