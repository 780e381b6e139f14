"""SLURM, TPU VM pod and GKE JobSet launchers, rendered in dry-run mode: the exact commands and environment."""

import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # `launch` is a folder of scripts, not an installed package

from launch import beam_build, jobset, slurm, tpu_pod  # noqa: E402

OVERRIDES = ["--config.mesh.tensor=2", "--config.train.num_steps=100"]
TRAIN = ["python", "-m", "octomed_jax.train", "--config=full_mix", *OVERRIDES]


def run_script(name, *args, env=None):
    """Runs `python launch/<name>.py ARGS` as a user would; returns stdout."""
    out = subprocess.run([sys.executable, os.path.join(REPO, "launch", f"{name}.py"), *args], cwd=REPO,
                         env={**os.environ, **(env or {})}, capture_output=True, text=True, check=True)
    return out.stdout


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("gpu[001-004]", ["gpu001", "gpu002", "gpu003", "gpu004"]),
        ("gpu[08-10,12],login1", ["gpu08", "gpu09", "gpu10", "gpu12", "login1"]),
        ("a1,b[3-4]", ["a1", "b3", "b4"]),
        ("node7", ["node7"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert slurm.expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("procid", [0, 3])
def test_slurm_task_environment(procid):
    env = {"SLURM_JOB_NODELIST": "gpu[001-004]", "SLURM_NTASKS": "4", "SLURM_PROCID": str(procid)}
    out = run_script("slurm", "task", "--dry_run", "--", *TRAIN, env=env)
    assert out.strip() == (f"JAX_COORDINATOR_ADDRESS=gpu001:8476 JAX_NUM_PROCESSES=4 JAX_PROCESS_ID={procid} "
                           + shlex.join(TRAIN))


def test_slurm_task_outside_slurm_fails():
    with pytest.raises(KeyError, match="SLURM_PROCID"):
        slurm.task_env({"SLURM_JOB_NODELIST": "gpu[001-004]", "SLURM_NTASKS": "4"})


def test_slurm_batch_script():
    out = run_script("slurm", "--nodes=4", "--gpus_per_node=8", "--partition=h100", "--time=72:00:00",
                     "--repo_dir=/shared/octomed-jax", "--setup=source .venv/bin/activate", "--config=full_mix",
                     *OVERRIDES, "--dry_run")
    lines = out.splitlines()
    assert lines[0] == "# sbatch <<'EOF'" and lines[1] == "#!/bin/bash" and lines[-1] == "# EOF"
    headers = [line.removeprefix("#SBATCH ") for line in lines if line.startswith("#SBATCH")]
    assert headers == ["--job-name=octomed-full-mix", "--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8",
                       "--exclusive", "--output=runs/slurm/%x-%j.out", "--partition=h100", "--time=72:00:00"]
    assert "cd /shared/octomed-jax" in lines
    assert lines.index("source .venv/bin/activate") < len(lines) - 2
    srun = lines[-2]
    assert shlex.split(srun) == ["srun", "--kill-on-bad-exit=1", "python", "launch/slurm.py", "task", "--port=8476",
                                 "--", *TRAIN]


def test_launchers_reject_unknown_arguments():
    with pytest.raises(SystemExit):
        slurm.main(["--nodes=2", "--config=full_mix", "--bogus=1", "--dry_run"])


def test_tpu_pod_commands():
    out = run_script("tpu_pod", "--tpu=octo-v5p-64", "--zone=us-east5-a", "--project=proj", "--setup",
                     "--config=full_mix", *OVERRIDES, "--workdir=gs://bucket/run", "--dry_run")
    setup, train = [shlex.split(line) for line in out.splitlines()]
    ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "octo-v5p-64", "--zone=us-east5-a", "--worker=all",
           "--project=proj"]
    assert setup[:-1] == ssh and train[:-1] == ssh
    assert setup[-1] == ("--command=cd ~/octomed-jax && python3 -m venv ~/octomed-jax/.venv && "
                         "source ~/octomed-jax/.venv/bin/activate && pip install -q -e '.[tpu]'")
    steps = train[-1].removeprefix("--command=").split(" && ")
    assert steps[:2] == ["cd ~/octomed-jax", "source ~/octomed-jax/.venv/bin/activate"]
    assert steps[2].startswith('export TPU_WORKER_HOSTNAMES="$(curl -sf -H \'Metadata-Flavor: Google\' ')
    assert "worker-network-endpoints" in steps[2]
    assert shlex.split(steps[3]) == [*TRAIN, "--workdir=gs://bucket/run"]


def test_tpu_worker_hostnames_parsing():
    """The metadata pipeline turns 'a:b:ip,...' into 'ip,ip' (run locally with the metadata replaced)."""
    pipeline = tpu_pod.WORKER_HOSTNAMES.split("|", 1)[1].rstrip(")")
    out = subprocess.run(f"echo -n 'x:y:10.0.0.2,x:y:10.0.0.3' |{pipeline}", shell=True, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "10.0.0.2,10.0.0.3"


def _manifest(out):
    body = out.split("<<'EOF'\n", 1)[1].rsplit("# EOF", 1)[0]
    try:
        import yaml
    except ImportError:
        pytest.skip("PyYAML not installed")
    return yaml.safe_load(body)


def test_jobset_gpu():
    out = run_script("jobset", "--platform=gpu", "--accelerator=nvidia-h100-80gb", "--hosts=4", "--image=reg/octo:1",
                     "--env=NCCL_DEBUG=WARN", "--config=full_mix", *OVERRIDES, "--dry_run")
    js = _manifest(out)
    assert js["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and js["kind"] == "JobSet"
    assert js["metadata"]["name"] == "octomed-full-mix"
    assert js["spec"]["network"]["enableDNSHostnames"] is True
    (rjob,) = js["spec"]["replicatedJobs"]
    job = rjob["template"]["spec"]
    assert rjob["name"] == "workers" and job["parallelism"] == job["completions"] == 4
    assert job["completionMode"] == "Indexed"
    pod = job["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    (c,) = pod["containers"]
    assert c["image"] == "reg/octo:1" and c["command"] == TRAIN
    assert c["resources"]["limits"] == {"nvidia.com/gpu": 8}
    assert c["env"] == [
        {"name": "JAX_COORDINATOR_ADDRESS", "value": "octomed-full-mix-workers-0-0.octomed-full-mix:8476"},
        {"name": "JAX_NUM_PROCESSES", "value": "4"},
        {"name": "JAX_PROCESS_ID",
         "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
        {"name": "NCCL_DEBUG", "value": "WARN"},
    ]


def test_jobset_tpu():
    out = run_script("jobset", "--platform=tpu", "--accelerator=tpu-v5p-slice", "--topology=4x4x4",
                     "--image=reg/octo:1", "--config=full_mix", *OVERRIDES, "--workdir=/data/run", "--dry_run")
    js = _manifest(out)
    job = js["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job["parallelism"] == job["completions"] == 16  # 64 chips, 4 per host
    pod = job["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                                   "cloud.google.com/gke-tpu-topology": "4x4x4"}
    (c,) = pod["containers"]
    assert c["command"] == [*TRAIN, "--workdir=/data/run"]
    assert c["resources"]["limits"] == {"google.com/tpu": 4}
    assert c["env"] == []  # GKE injects TPU_WORKER_HOSTNAMES; jax.distributed.initialize() finds the rest


def test_jobset_needs_a_topology_or_hosts():
    with pytest.raises(ValueError, match="topology"):
        jobset.render("full_mix", [], platform="tpu", image="i", accelerator="tpu-v5p-slice")
    with pytest.raises(ValueError, match="hosts"):
        jobset.render("full_mix", [], platform="gpu", image="i", accelerator="nvidia-h100-80gb")


def test_beam_build_commands_parse_as_the_runners_options():
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, PortableOptions

    common = ["--config=full_mix", "--out=/mnt/out", "--source_root=/mnt/src"]
    args, overrides = beam_build.parse_args(["dataflow", *common, "--project=p1", "--region=r1", "--bucket=b1",
                                             "--image=img:1", "--", "--config.recipe.seed=3"])
    argv = beam_build.build_argv("dataflow", args, overrides)
    assert argv[:3] == ["python", "-m", "data_pipeline.build"] and argv[-1] == "--config.recipe.seed=3"
    assert "--runner=DataflowRunner" in argv and "--out=/mnt/out" in argv
    options = PipelineOptions(shlex.split(next(a for a in argv if a.startswith("--beam_args="))[len("--beam_args="):]))
    gcp = options.view_as(GoogleCloudOptions)
    assert (gcp.project, gcp.region, gcp.temp_location) == ("p1", "r1", "gs://b1/tmp")
    args, _ = beam_build.parse_args(["flink", *common, "--flink_master=h:8081", "--flink_version=1.19"])
    flink = PipelineOptions(shlex.split(beam_build.build_argv("flink", args)[-1][len("--beam_args="):]))
    assert flink.view_as(PortableOptions).environment_config == '{"command": "/opt/beam/boot"}'
    args, _ = beam_build.parse_args(["spark", *common, "--spark_master_url=spark://h:7077"])
    with pytest.raises(SystemExit, match="the spark runner needs --image"):
        beam_build.build_argv("spark", args)
