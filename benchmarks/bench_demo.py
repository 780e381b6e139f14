"""The first command as a newcomer meets it: `python -m octomed_demo`, whole, in a fresh workdir.

    python benchmarks/bench_demo.py                  # seed 0
    python benchmarks/bench_demo.py --seeds 0 1      # one fresh run per seed
    python benchmarks/bench_demo.py --keep --config.train.num_steps=20   # extra args go to the demo

A seed sets the world and teacher of the recipe (`recipe.seed`), the data order (`data.seed`) and the
student's initialisation (`train.seed`). Prints, per run, the wall time of each phase (from the demo's
report), the wall time of the whole command (interpreter start and imports included) and the held-out
accuracy per category; the demo's target is at most 6 minutes on a quiet 2-core machine and at least 80%
in every category. Run it on a quiet machine: other processes on the cores stretch every phase.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_S = 360.0
TARGET_ACCURACY = 80.0


def run_demo(seed: int, extra: list[str], keep: bool) -> dict:
    """One demo run in a fresh workdir; its report with the command's wall time as `wall_s`."""
    workdir = tempfile.mkdtemp(prefix=f"bench_demo_s{seed}_")
    cmd = [sys.executable, "-m", "octomed_demo", f"--workdir={workdir}", f"--config.recipe.seed={seed}",
           f"--config.data.seed={seed}", f"--config.train.seed={seed}", *extra]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    path = os.path.join(workdir, "demo_report.json")
    if proc.returncode or not os.path.exists(path):
        sys.exit(f"bench_demo: the demo failed (exit {proc.returncode}) or was interrupted; workdir {workdir}")
    with open(path) as f:
        report = json.load(f)
    if not keep:
        shutil.rmtree(workdir)
    return {**report, "wall_s": wall}


def summary_lines(seed: int, report: dict) -> list[str]:
    """Phase times, total and per-category accuracy of one run, with the targets."""
    t = report["timings_s"]
    lines = [f"seed {seed}: " + ", ".join(f"{k} {v:.0f}s" for k, v in t.items() if k != "total")
             + f"; demo total {t['total']:.0f}s, command {report['wall_s']:.0f}s "
             + ("(within" if report["wall_s"] <= TARGET_S else "(OVER") + f" {TARGET_S:.0f}s)"]
    for category, m in report["categories"].items():
        ok = "ok" if m["after"] >= TARGET_ACCURACY else f"BELOW {TARGET_ACCURACY:.0f}%"
        lines.append(f"  {category:<20} {m['before']:5.1f}% -> {m['after']:5.1f}% of {m['questions']} held out  {ok}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--keep", action="store_true", help="keep the workdirs (default: deleted)")
    args, extra = parser.parse_known_args()
    lines = [f"bench_demo: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start"]
    for seed in args.seeds:
        lines += summary_lines(seed, run_demo(seed, extra, args.keep))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
