"""The recipe build on a Beam cluster runner: Dataflow, Flink or Spark (docs/beam_build.md says what each needs).

  python launch/beam_build.py dataflow --config=full_mix --out=/mnt/recipes/full_mix --source_root=/mnt/sources \
      --project=P --region=us-central1 --bucket=B --image=us-central1-docker.pkg.dev/P/octomed/beam:2.77
  python launch/beam_build.py flink --config=full_mix --out=/data/recipes/full_mix --source_root=/data/sources \
      --flink_master=localhost:8081 --flink_version=1.19
  python launch/beam_build.py spark --config=full_mix --out=/data/recipes/full_mix --source_root=/data/sources \
      --spark_master_url=spark://localhost:7077 --image=IMAGE
  ... --dry_run    # print the command instead of running it

Each runner's required settings are checked before anything starts (the message names the missing flag).
Everything after `--` is passed to the build as is (`--config.x.y=v` overrides). One worker host: the
completion store is SQLite on that host's disk (docs/beam_build.md, "What a cluster runner needs"). Teacher API
keys reach the workers through their environment, never through the pipeline options shown on job pages.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

if __package__ in (None, ""):  # run as `python launch/beam_build.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch.common import shell_join

# Runner -> (Beam runner name, the flags it requires).
RUNNERS = {
    "dataflow": ("DataflowRunner", ("project", "region", "bucket", "image")),
    "flink": ("FlinkRunner", ("flink_master", "flink_version")),
    "spark": ("SparkRunner", ("spark_master_url", "image")),
}


def beam_options(runner: str, args: argparse.Namespace) -> list[str]:
    """The runner's pipeline options (`--beam_args`) from the launcher's flags."""
    if runner == "dataflow":
        return [f"--project={args.project}", f"--region={args.region}",
                f"--temp_location=gs://{args.bucket}/tmp", f"--staging_location=gs://{args.bucket}/staging",
                f"--sdk_container_image={args.image}", "--num_workers=1", "--max_num_workers=1",
                f"--machine_type={args.machine_type}", f"--number_of_worker_harness_threads={args.threads}",
                "--experiments=no_use_multiple_sdk_containers"]
    environment = (["--environment_type=DOCKER", f"--environment_config={args.image}"] if args.image
                   else ["--environment_type=PROCESS", '--environment_config={"command": "/opt/beam/boot"}'])
    if runner == "flink":
        return [f"--flink_master={args.flink_master}", f"--flink_version={args.flink_version}", *environment,
                f"--parallelism={args.threads}"]
    return [f"--spark_master_url={args.spark_master_url}", "--spark_version=3", *environment]


def build_argv(runner: str, args: argparse.Namespace, overrides: Sequence[str] = ()) -> list[str]:
    """`python -m data_pipeline.build ...` for `runner`.

    Raises:
      SystemExit: a flag the runner requires is missing (named), or an unknown runner.
    """
    if runner not in RUNNERS:
        raise SystemExit(f"beam_build: unknown runner {runner!r}; known: {sorted(RUNNERS)}")
    beam_runner, required = RUNNERS[runner]
    missing = [f"--{name}" for name in required if not getattr(args, name)]
    if missing:
        raise SystemExit(f"beam_build: the {runner} runner needs {', '.join(missing)} (docs/beam_build.md)")
    return [args.python, "-m", "data_pipeline.build", f"--config={args.config}", f"--out={args.out}",
            f"--source_root={args.source_root}", f"--runner={beam_runner}",
            f"--beam_args={shell_join(beam_options(runner, args))}", *overrides]


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The launcher's flags, and the build overrides after `--`."""
    argv = list(argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runner", choices=sorted(RUNNERS))
    parser.add_argument("--config", required=True, help="recipe config name (configs/NAME.py)")
    parser.add_argument("--out", required=True, help="output folder every worker can write")
    parser.add_argument("--source_root", required=True, help="the sources, the same path on every worker")
    parser.add_argument("--threads", type=int, default=32, help="SDK harness threads / parallelism")
    parser.add_argument("--image", default="", help="the worker container (Dataflow, Spark; Flink: DOCKER)")
    parser.add_argument("--project", default="")
    parser.add_argument("--region", default="")
    parser.add_argument("--bucket", default="", help="GCS bucket for Dataflow's temp and staging files")
    parser.add_argument("--machine_type", default="n2-highmem-32")
    parser.add_argument("--flink_master", default="")
    parser.add_argument("--flink_version", default="")
    parser.add_argument("--spark_master_url", default="")
    parser.add_argument("--python", default="python")
    parser.add_argument("--dry_run", action="store_true", help="print the command instead of running it")
    return parser.parse_args(own), overrides


def main(argv: Sequence[str]) -> int:
    args, overrides = parse_args(argv)
    command = build_argv(args.runner, args, overrides)
    print(shell_join(command))
    return 0 if args.dry_run else subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
