"""Training on a Cloud TPU VM pod slice: the same command on every worker through `gcloud ... ssh --worker=all`.

  python launch/tpu_pod.py --tpu=my-v5p-64 --zone=us-east5-a --config=full_mix --workdir=gs://bucket/runs/full_mix
  python launch/tpu_pod.py --tpu=my-v5p-64 --zone=us-east5-a --setup --config=full_mix      # install first
  python launch/tpu_pod.py --tpu=my-v5p-64 --zone=us-east5-a --config=full_mix --dry_run    # print only

Every worker must hold the repository at `--repo_dir` (default `~/octomed-jax`) and the data and initial
weights at the paths the config names (or shared storage such as a GCS FUSE mount). On each worker the
command exports TPU_WORKER_HOSTNAMES from the VM's metadata (the workers' internal IPs) so that
`maybe_initialize_distributed` calls `jax.distributed.initialize()`, which detects the coordinator, the
process count and this worker's index by itself on a TPU pod.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

if __package__ in (None, ""):  # run as `python launch/tpu_pod.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch.common import parse_launcher_args, shell_join, train_argv

METADATA_URL = "http://metadata.google.internal/computeMetadata/v1/instance/attributes/worker-network-endpoints"
# "a:b:10.0.0.2,a:b:10.0.0.3" -> "10.0.0.2,10.0.0.3" (JAX's own TPU cluster detection reads the same field)
WORKER_HOSTNAMES = (
    f"$(curl -sf -H 'Metadata-Flavor: Google' {METADATA_URL} | tr ',' '\\n' | cut -d: -f3 | paste -sd, -)"
)


def worker_script(config: str, overrides: Sequence[str], *, repo_dir: str, venv: str, workdir: str = "",
                  log_file: str = "") -> str:
    """The shell command every worker runs: enter the repo, activate the venv, export the worker list, train."""
    train = shell_join(train_argv(config, overrides, workdir))
    if log_file:
        train += f" 2>&1 | tee {log_file}"
    return " && ".join([
        f"cd {repo_dir}",
        f"source {venv}/bin/activate",
        f'export TPU_WORKER_HOSTNAMES="{WORKER_HOSTNAMES}"',
        train,
    ])


def setup_script(repo_dir: str, venv: str) -> str:
    """Installs the package with libtpu on a worker (the repository must already be at `repo_dir`)."""
    return " && ".join([
        f"cd {repo_dir}",
        f"python3 -m venv {venv}",
        f"source {venv}/bin/activate",
        "pip install -q -e '.[tpu]'",
    ])


def gcloud_ssh(tpu: str, zone: str, command: str, project: str = "") -> list[str]:
    """`gcloud compute tpus tpu-vm ssh TPU --zone=Z --worker=all --command=...` as an argv list."""
    argv = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, f"--zone={zone}", "--worker=all"]
    if project:
        argv.append(f"--project={project}")
    return [*argv, f"--command={command}"]


def commands(config: str, overrides: Sequence[str], *, tpu: str, zone: str, project: str = "",
             repo_dir: str = "~/octomed-jax", venv: str = "", workdir: str = "", setup: bool = False,
             log_file: str = "") -> list[list[str]]:
    """The gcloud commands to run, in order: the optional install on every worker, then training."""
    venv = venv or f"{repo_dir}/.venv"
    out = []
    if setup:
        out.append(gcloud_ssh(tpu, zone, setup_script(repo_dir, venv), project))
    out.append(gcloud_ssh(tpu, zone, worker_script(config, overrides, repo_dir=repo_dir, venv=venv,
                                                   workdir=workdir, log_file=log_file), project))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch/tpu_pod.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tpu", required=True, help="the TPU VM (pod slice) name")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", default="")
    parser.add_argument("--repo_dir", default="~/octomed-jax", help="the repository on every worker")
    parser.add_argument("--venv", default="", help="the virtual environment on every worker (default: REPO/.venv)")
    parser.add_argument("--setup", action="store_true", help="first create the venv and pip install .[tpu]")
    parser.add_argument("--log_file", default="", help="also tee each worker's output to this file")
    args, overrides = parse_launcher_args(parser, argv)
    cmds = commands(args.config, overrides, tpu=args.tpu, zone=args.zone, project=args.project,
                    repo_dir=args.repo_dir, venv=args.venv, workdir=args.workdir, setup=args.setup,
                    log_file=args.log_file)
    for cmd in cmds:
        if args.dry_run:
            print(shell_join(cmd))
            continue
        status = subprocess.run(cmd, check=False).returncode
        if status:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
