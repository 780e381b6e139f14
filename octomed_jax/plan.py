"""CLI: the compile and memory plan of a training config on TPU pods or GPU clusters (logic: `planning.py`).

  python -m octomed_jax.plan --config=full_mix --topology=v5p:2x2x2 --topology=v5p:4x4x4 --json=plan.json
  python -m octomed_jax.plan --config=full_mix --topology=h100:8
  python -m octomed_jax.plan --config=full_mix --topology=gpu:8 --config.mesh.tensor=2
  python -m octomed_jax.plan --checkpoint=runs/full_mix/checkpoints/500 --topology=v5p:4x4x4

For each `--topology` the train step of `--config` (or of the run a `--checkpoint` step comes from: its run
contract's config) is lowered with abstract inputs and compiled (TPU: by the
TPU compiler via libtpu, `pip install -e ".[tpu]"`; GPU: on N fake CPU devices, memory estimated), and a
table gives bytes per device, FLOPs per step, the estimated step time and MFU, and the days OctoMed's 3 epochs
take.
The flags live on a `FlagValues` of their own, defined when `run` parses.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

# Abstract TPU compilation needs no TPU; keep JAX on the host so libtpu does not try to open one.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu takes /tmp/libtpu_lockfile for the chips it drives; compiling for absent chips needs none of them.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import ml_collections  # noqa: E402
from absl import flags  # noqa: E402

from octomed_jax import planning  # noqa: E402


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_multi_string("topology", [], "v5p:2x2x2, v5p:4x4x4, v6e:4x4, gpu:8, h100:8, ... (repeatable)",
                              flag_values=fv)
    flags.DEFINE_bool("layered_cost", True, "TPU: compose the step's cost from unrolled 1-2 layer compiles "
                      "(XLA's cost analysis counts a scanned loop's body once).", flag_values=fv)
    flags.DEFINE_string("json", None, "Also write the figures to this JSON file.", flag_values=fv)
    flags.DEFINE_bool("gpu_compile", True, "Compile GPU topologies on the fake CPU devices (else lower only).",
                      flag_values=fv)
    flags.DEFINE_string("checkpoint", None, "Plan the run a training step (or workdir) comes from, from its run "
                        "contract, instead of --config.", flag_values=fv)


def _parse(argv: Sequence[str]) -> tuple[ml_collections.ConfigDict, flags.FlagValues]:
    """The config (with `--config.x.y=v` overrides) and the plan's flags; a bad name or flag exits naming it."""
    from configs.cli import parse_cli

    config, fv = parse_cli(argv, program="plan", doc=__doc__ or "", define_flags=_define_flags, config_optional=True)
    if (config is None) == (fv.checkpoint is None):
        raise planning.PlanError("give --config=NAME (e.g. full_mix) or --checkpoint=STEP_OR_WORKDIR, not both")
    if config is None:
        from octomed_jax.checkpoint import load_contract

        try:
            config = load_contract(fv.checkpoint).run_config()
        except (FileNotFoundError, ValueError) as e:
            raise planning.PlanError(str(e)) from e
    if not fv.topology:
        raise planning.PlanError("give at least one --topology (e.g. v5p:2x2x2 or gpu:8)")
    return config, fv


def run(argv: Sequence[str]) -> list[dict[str, Any]]:
    """The CLI without exiting: parses `argv` (argv[0] is the program), plans every topology, prints the table."""
    config, fv = _parse(argv)
    results = []
    for name in fv.topology:
        print(f"plan: {name} ...", file=sys.stderr, flush=True)
        results.append(planning.plan_topology(config, name, compile_gpu=fv.gpu_compile, layered=fv.layered_cost))
        row = planning.format_table(results[-1:]).splitlines()[-1]
        print(row, file=sys.stderr, flush=True)  # progress on long runs
    print(planning.format_table(results))
    if any(r["platform"] == "gpu" for r in results):
        print("GPU rows: memory is an estimate (planning.estimate_memory); the step estimate is the model FLOPs at "
              f"the MFU one H200 measured ({planning.MEASURED_GPU_MFU:.1%}, benchmarks/bench_mfu.py; the JSON "
              "also has the analytic roofline, step_seconds_analytic); compiled on fake CPU devices to prove the "
              "step lowers and shards (the Pallas kernels in interpret mode).")
    if any(r["platform"] == "tpu" for r in results):
        print("TPU rows: compiler figures (layered_cost) plus the flash kernels' FLOPs, timed at the peak "
              "(XLA's cost analysis leaves Pallas kernels out); MFU estimate = model FLOPs / (step x peak).")
    if fv.json:
        with open(fv.json, "w") as f:
            json.dump({"config": config.recipe.name, "results": results}, f, indent=2)
    return results


def main() -> None:
    needed = planning.num_cpu_devices_needed([a.split("=", 1)[1] for a in sys.argv if a.startswith("--topology=")])
    if needed:  # before anything starts the CPU backend
        jax.config.update("jax_num_cpu_devices", needed)
    try:
        run(sys.argv)
    except planning.PlanError as e:
        sys.exit(f"plan: {e}")


if __name__ == "__main__":
    main()
