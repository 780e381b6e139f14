"""Training on GKE as a Kubernetes JobSet: a multi-host TPU slice or a GPU node pool, one pod per host.

  python launch/jobset.py --platform=tpu --accelerator=tpu-v5p-slice --topology=4x4x4 --image=IMAGE \\
      --config=full_mix --workdir=/data/runs/full_mix                                # kubectl apply
  python launch/jobset.py --platform=gpu --accelerator=nvidia-h100-80gb --hosts=4 --gpus_per_host=8 \\
      --image=IMAGE --config=full_mix --config.mesh.tensor=2 --dry_run               # print the manifest

The manifest is rendered from `launch/templates/jobset_{tpu,gpu}.yaml` and piped to `kubectl apply -f -`.
Needs the JobSet controller in the cluster and an image holding the repository (at --repo_dir) with its
environment (`.[tpu]` for TPU). TPU pods get TPU_WORKER_HOSTNAMES from GKE (jax.distributed.initialize()
detects the rest); GPU pods get JAX_COORDINATOR_ADDRESS (pod 0 through the JobSet's headless service),
JAX_NUM_PROCESSES and JAX_PROCESS_ID (the Indexed Job completion index).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import string
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):  # run as `python launch/jobset.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch.common import DEFAULT_PORT, job_name, parse_launcher_args, train_argv

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def _flow(value: Any) -> str:
    """A YAML flow value (JSON is valid YAML), so that argv and env render on one line, exactly quoted."""
    return json.dumps(value)


def gpu_env(name: str, hosts: int, port: int) -> list[dict[str, Any]]:
    """What `maybe_initialize_distributed` reads, for pod i of `hosts` in JobSet `name`."""
    return [
        # Pod 0 of replicated job "workers": <jobset>-workers-0-0, under the JobSet's subdomain <jobset>.
        {"name": "JAX_COORDINATOR_ADDRESS", "value": f"{name}-workers-0-0.{name}:{port}"},
        {"name": "JAX_NUM_PROCESSES", "value": str(hosts)},
        {"name": "JAX_PROCESS_ID", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
    ]


def render(
    config: str,
    overrides: Sequence[str],
    *,
    platform: str,
    image: str,
    accelerator: str,
    topology: str = "",
    hosts: int = 0,
    chips_per_host: int = 4,
    gpus_per_host: int = 8,
    workdir: str = "",
    repo_dir: str = "/app",
    name: str = "",
    max_restarts: int = 0,
    port: int = DEFAULT_PORT,
    extra_env: Sequence[str] = (),
) -> str:
    """The JobSet manifest (YAML text) running `python -m octomed_jax.train --config=...` on every host.

    Args:
      config, overrides: the trainer's config name and `--config.x=y` overrides.
      platform: "tpu" or "gpu".
      image: the container image.
      accelerator: GKE's accelerator label (`tpu-v5p-slice`, `tpu-v6e-slice`, `nvidia-h100-80gb`, ...).
      topology: TPU slice topology ("4x4x4"); the host count is chips / chips_per_host.
      hosts: GPU nodes (one pod each).
      extra_env: more "KEY=VALUE" variables for every pod.
    """
    name = name or job_name(config)
    env: list[dict[str, Any]] = []
    if platform == "tpu":
        if not topology:
            raise ValueError("a TPU JobSet needs --topology (e.g. 4x4x4)")
        chips = math.prod(int(d) for d in topology.split("x"))
        hosts = max(1, chips // chips_per_host)
        values = dict(accelerator=accelerator, topology=topology, chips_per_host=min(chips, chips_per_host))
    elif platform == "gpu":
        if hosts < 1:
            raise ValueError("a GPU JobSet needs --hosts >= 1")
        env = gpu_env(name, hosts, port)
        values = dict(accelerator=accelerator, gpus_per_host=gpus_per_host, port=port)
    else:
        raise ValueError(f"platform must be tpu or gpu, got {platform!r}")
    for item in extra_env:
        key, _, value = item.partition("=")
        env.append({"name": key, "value": value})
    with open(os.path.join(TEMPLATES, f"jobset_{platform}.yaml")) as f:
        template = string.Template(f.read())
    return template.substitute(
        name=name,
        hosts=hosts,
        image=image,
        repo_dir=repo_dir,
        max_restarts=max_restarts,
        command=_flow(train_argv(config, overrides, workdir)),
        env=_flow(env),
        **values,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch/jobset.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--platform", choices=("tpu", "gpu"), required=True)
    parser.add_argument("--image", required=True, help="container image with the repository and its environment")
    parser.add_argument("--accelerator", required=True, help="tpu-v5p-slice, tpu-v6e-slice, nvidia-h100-80gb, ...")
    parser.add_argument("--topology", default="", help="TPU slice topology, e.g. 4x4x4")
    parser.add_argument("--chips_per_host", type=int, default=4)
    parser.add_argument("--hosts", type=int, default=0, help="GPU nodes")
    parser.add_argument("--gpus_per_host", type=int, default=8)
    parser.add_argument("--repo_dir", default="/app", help="the repository inside the image")
    parser.add_argument("--name", default="", help="JobSet name (default: octomed-<config>)")
    parser.add_argument("--max_restarts", type=int, default=0)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for every pod (repeatable)")
    args, overrides = parse_launcher_args(parser, argv)
    manifest = render(args.config, overrides, platform=args.platform, image=args.image,
                      accelerator=args.accelerator, topology=args.topology, hosts=args.hosts,
                      chips_per_host=args.chips_per_host, gpus_per_host=args.gpus_per_host, workdir=args.workdir,
                      repo_dir=args.repo_dir, name=args.name, max_restarts=args.max_restarts, port=args.port,
                      extra_env=args.env)
    if args.dry_run:
        print("# kubectl apply -f - <<'EOF'")
        print(manifest, end="")
        print("# EOF")
        return 0
    return subprocess.run(["kubectl", "apply", "-f", "-"], input=manifest, text=True, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
