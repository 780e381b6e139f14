"""The compile and memory plan's GPU path on a tiny model over 8 fake CPU devices (the TPU path needs libtpu)."""

import json

import pytest

from octomed_jax import plan, planning

TINY = ["--config.mesh.tensor=1", "--config.model.preset=tiny_vocab", "--config.data.seq_len=128",
        "--config.data.max_patches=32", "--config.train.global_batch_rows=8", "--config.train.loss_chunk=64"]


def run_plan(tmp_path, *extra):
    out = tmp_path / "plan.json"
    results = plan.run(["plan", "--config=full_mix", *TINY, *extra, f"--json={out}"])
    assert json.loads(out.read_text())["results"] == json.loads(json.dumps(results))
    return results


@pytest.fixture(scope="module")
def fsdp8(tmp_path_factory):
    (r,) = run_plan(tmp_path_factory.mktemp("fsdp8"), "--topology=gpu:8", "--config.mesh.fsdp=-1")
    return r


def test_gpu_plan_compiles_and_reports(fsdp8):
    r = fsdp8
    assert r["platform"] == "gpu" and r["devices"] == 8 and r["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert (r["rows_per_micro_batch"], r["rows_per_device"], r["micro_steps"]) == (8, 1, 1)
    assert r["compile_seconds"] is not None and r["memory"]["compiler"]["temp"] > 0  # compiled on the CPUs
    m = r["memory"]
    assert m["source"] == "estimate" and m["parameters"] > 0 and m["optimizer"] > m["parameters"]
    assert m["total"] == pytest.approx(m["parameters"] + m["optimizer"] + m["batch"] + m["activations"]
                                       + m["temporaries"])
    assert r["fits"] and r["hbm_bytes"] == 80e9
    assert r["flops_per_step_model"] > 0 and r["step_seconds_compiler"] is None
    # GPU plans the Triton kernel (lowered in interpret mode here) and times the step at the MFU one GPU
    # measured, slower than the analytic roofline of the executed FLOPs.
    assert r["attention_impl"] == "pallas_gpu" and r["attention_flops_per_step"]["kernel"] > 0
    assert r["step_seconds_estimate"] > r["step_seconds_analytic"] > 0
    assert r["mfu_estimate"] == pytest.approx(planning.MEASURED_GPU_MFU)
    assert r["days_at_mfu"] > 0 and r["octomed"]["tokens"] == pytest.approx(3 * 8_095_571 * 1_100)
    row = planning.format_table([r]).splitlines()[-1]
    assert row.startswith("| gpu:8 (8) | 1,8,1 | dots_with_no_batch_dims_saveable | 1 x 1 |")
    assert "| estimate |" in row and "fits" in row


def test_per_device_bytes_shrink_as_fsdp_grows(fsdp8, tmp_path):
    (r2,) = run_plan(tmp_path, "--topology=h100:8", "--config.mesh.data=4", "--config.mesh.fsdp=2",
                     "--nogpu_compile")
    assert r2["compile_seconds"] is None and r2["mesh"] == {"data": 4, "fsdp": 2, "tensor": 1}
    m2, m8 = r2["memory"], fsdp8["memory"]
    # The embedding and vocabulary matrices dominate the tiny model; they split 2 vs 8 ways over fsdp.
    assert m8["parameters"] < 0.6 * m2["parameters"]
    assert m8["optimizer"] < 0.6 * m2["optimizer"]
    assert m8["total"] < m2["total"]


def test_unknown_topology_and_missing_devices():
    with pytest.raises(planning.PlanError, match="unknown topology"):
        planning.get_topology("k80:8")
    with pytest.raises(planning.PlanError, match="fake CPU devices"):
        planning.get_topology("gpu:64")
