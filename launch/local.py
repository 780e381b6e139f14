"""Start N CPU processes on 127.0.0.1 as one JAX job, for testing multi-host code on one machine.

  python -m data_pipeline.build --config=demo --out=runs/demo/data    # the demo recipe's traces
  python launch/local.py --num_processes=2 --devices_per_process=2 -- \\
      python -m octomed_jax.train --config=demo --config.data.data_dir=runs/demo/data --workdir=runs/local2

Each process gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (read by
`octomed_jax.training.trainer.maybe_initialize_distributed`) and its own fake CPU devices. Output of
process i goes to <log_dir>/process_<i>.log (process 0 is also echoed). Exits with the first non-zero
status; if one process fails the others are stopped.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(index: int, num: int, port: int, devices: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of process `index` of `num`."""
    env = dict(os.environ if base is None else base)
    env.update(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES=str(num),
        JAX_PROCESS_ID=str(index),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    return env


def launch(command: list[str], num_processes: int, devices_per_process: int, log_dir: str,
           dry_run: bool = False) -> int:
    port = free_port()
    os.makedirs(log_dir, exist_ok=True)
    envs = [process_env(i, num_processes, port, devices_per_process) for i in range(num_processes)]
    if dry_run:
        for env in envs:
            keys = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "XLA_FLAGS")
            print(" ".join(f"{k}={env[k]}" for k in keys), " ".join(command))
        return 0
    procs = []
    for i, env in enumerate(envs):
        log = open(os.path.join(log_dir, f"process_{i}.log"), "w")  # noqa: SIM115
        procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    status = 0
    while any(p.poll() is None for p in procs):
        failed = [p for p in procs if p.poll() not in (None, 0)]
        if failed:
            status = failed[0].returncode
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            break
        time.sleep(0.5)
    for p in procs:
        p.wait()
        status = status or p.returncode
    with open(os.path.join(log_dir, "process_0.log")) as f:
        sys.stdout.write(f.read()[-4000:])
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=2)
    parser.add_argument("--log_dir", default="runs/local_launch")
    parser.add_argument("--dry_run", action="store_true", help="print each process's environment and command")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command every process runs")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    sys.exit(launch(command, args.num_processes, args.devices_per_process, args.log_dir, args.dry_run))


if __name__ == "__main__":
    main()
