"""Multi-node GPU training under SLURM: one task per node, each with all of its GPUs, as one JAX job.

Submit (renders the batch script and pipes it to `sbatch`):

  python launch/slurm.py --nodes=4 --gpus_per_node=8 --partition=gpu --config=full_mix --config.mesh.tensor=2
  python launch/slurm.py --nodes=4 --config=full_mix --dry_run        # print the script and sbatch command

Inside the job, `srun` starts one `python launch/slurm.py task -- <train command>` per node. The task reads
SLURM's environment and exports what `octomed_jax.training.trainer.maybe_initialize_distributed` reads:

  JAX_COORDINATOR_ADDRESS  first host of SLURM_JOB_NODELIST, port --port (process 0 runs the coordinator)
  JAX_NUM_PROCESSES        SLURM_NTASKS (= nodes)
  JAX_PROCESS_ID           SLURM_PROCID

then execs the training command (`task --dry_run` prints them instead).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence

if __package__ in (None, ""):  # run as `python launch/slurm.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch.common import DEFAULT_PORT, job_name, parse_launcher_args, shell_join, train_argv


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list -> host names: "gpu[001-003,007],login1" -> gpu001 gpu002 gpu003 gpu007 login1.

    (`scontrol show hostnames` does the same, but is not on every machine that renders a job.)
    """
    hosts: list[str] = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", nodelist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not hi:
                hosts.append(prefix + lo)
                continue
            width = len(lo)  # zero padding as written: 001-004
            hosts.extend(f"{prefix}{i:0{width}d}" for i in range(int(lo), int(hi) + 1))
    return hosts


def task_env(environ: Mapping[str, str], port: int = DEFAULT_PORT) -> dict[str, str]:
    """The JAX_* variables of this SLURM task, from SLURM_JOB_NODELIST, SLURM_NTASKS and SLURM_PROCID."""
    missing = [k for k in ("SLURM_JOB_NODELIST", "SLURM_NTASKS", "SLURM_PROCID") if k not in environ]
    if missing:
        raise KeyError(f"not inside a SLURM job step: {', '.join(missing)} unset (run this under srun)")
    hosts = expand_nodelist(environ["SLURM_JOB_NODELIST"])
    return {
        "JAX_COORDINATOR_ADDRESS": f"{hosts[0]}:{port}",
        "JAX_NUM_PROCESSES": str(int(environ["SLURM_NTASKS"])),
        "JAX_PROCESS_ID": str(int(environ["SLURM_PROCID"])),
    }


def render_batch_script(
    config: str,
    overrides: Sequence[str],
    *,
    nodes: int,
    gpus_per_node: int = 8,
    cpus_per_task: int = 0,
    partition: str = "",
    time_limit: str = "",
    account: str = "",
    workdir: str = "",
    repo_dir: str = "",
    setup: str = "",
    port: int = DEFAULT_PORT,
    log_dir: str = "runs/slurm",
) -> str:
    """The sbatch script: one task per node with all its GPUs, `srun` of the task wrapper around the trainer."""
    name = job_name(config)
    headers = [
        f"--job-name={name}",
        f"--nodes={nodes}",
        "--ntasks-per-node=1",  # one JAX process per node drives all of its GPUs
        f"--gpus-per-node={gpus_per_node}",
        "--exclusive",
        f"--output={log_dir}/%x-%j.out",
    ]
    if cpus_per_task:
        headers.append(f"--cpus-per-task={cpus_per_task}")
    if partition:
        headers.append(f"--partition={partition}")
    if time_limit:
        headers.append(f"--time={time_limit}")
    if account:
        headers.append(f"--account={account}")
    task = ["python", "launch/slurm.py", "task", f"--port={port}", "--", *train_argv(config, overrides, workdir)]
    lines = ["#!/bin/bash", *(f"#SBATCH {h}" for h in headers), "set -euo pipefail"]
    lines.append(f"cd {shell_join([repo_dir or os.getcwd()])}")
    if setup:
        lines.append(setup)  # e.g. `source .venv/bin/activate` or `module load cuda`
    lines.append(f"mkdir -p {log_dir}")
    lines.append(f"srun --kill-on-bad-exit=1 {shell_join(task)}")
    return "\n".join(lines) + "\n"


def submit_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch/slurm.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--gpus_per_node", type=int, default=8)
    parser.add_argument("--cpus_per_task", type=int, default=0)
    parser.add_argument("--partition", default="")
    parser.add_argument("--time", default="", help="SLURM time limit, e.g. 72:00:00")
    parser.add_argument("--account", default="")
    parser.add_argument("--repo_dir", default="", help="the repository on the nodes (default: here)")
    parser.add_argument("--setup", default="", help="a shell line run before srun (activate the environment)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args, overrides = parse_launcher_args(parser, argv)
    script = render_batch_script(
        args.config, overrides, nodes=args.nodes, gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
        partition=args.partition, time_limit=args.time, account=args.account, workdir=args.workdir,
        repo_dir=args.repo_dir, setup=args.setup, port=args.port)
    if args.dry_run:
        print("# sbatch <<'EOF'")
        print(script, end="")
        print("# EOF")
        return 0
    os.makedirs("runs/slurm", exist_ok=True)  # slurmd opens --output before the script runs
    return subprocess.run(["sbatch"], input=script, text=True, check=False).returncode


def task_main(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch/slurm.py task")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--dry_run", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    environ = dict(os.environ if environ is None else environ)
    jax_env = task_env(environ, args.port)
    if args.dry_run:
        print(" ".join(f"{k}={v}" for k, v in jax_env.items()), shell_join(command))
        return 0
    os.execvpe(command[0], command, {**environ, **jax_env})
    return 1  # not reached


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["task"]:
        return task_main(argv[1:])
    return submit_main(argv)


if __name__ == "__main__":
    sys.exit(main())
