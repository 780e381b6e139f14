"""Hugging Face round trips, checkpoint layouts, and the errors of load_hf and the export CLI."""

import json
import os
import re
import shutil
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from conftest import hf_logits, image_prompt, pixels, transformers
from flax import nnx
from safetensors.numpy import save_file

from octomed_jax import checkpoint as ckpt_lib
from octomed_jax import sharding
from octomed_jax.hf import CheckpointError, keys, load_hf, save_hf
from octomed_jax.hf.safetensors_io import Checkpoint
from octomed_jax.models.config import get_preset
from octomed_jax.models.qwen2_5_vl import init_model


def tensors(folder):
    ckpt = Checkpoint(folder)
    return {k: ckpt.read(k) for k in ckpt.keys()}


def test_hf_to_ours_to_hf_is_byte_identical(hf_checkpoint, ours, tmp_path):
    _, path = hf_checkpoint
    save_hf(ours, str(tmp_path))
    before, after = tensors(path), tensors(str(tmp_path))
    assert sorted(before) == sorted(after)
    for name in before:
        assert before[name].dtype == after[name].dtype, name
        assert before[name].tobytes() == after[name].tobytes(), name


@pytest.mark.parametrize("preset", ["tiny", "tiny_vocab"])  # tied and untied embeddings
def test_ours_to_hf_loads_in_transformers_with_same_logits(preset, tmp_path):
    cfg = get_preset(preset)
    model = init_model(cfg, seed=3)
    save_hf(model, str(tmp_path), max_shard_bytes=20 * 2**20)  # forces several shards and an index
    assert os.path.exists(tmp_path / "model.safetensors.index.json")
    hf, info = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    grids = [[1, 6, 4]]
    ids = image_prompt(grids, [3, 5])[None]
    px = pixels(grids, cfg.vision.patch_dim)
    ref = hf_logits(hf.eval(), ids, px, grids)
    assert np.abs(np.asarray(model(ids, px, np.array(grids))) - ref).max() <= 1e-4


def test_reads_the_in_memory_layout_of_transformers_5(hf_checkpoint, ours, tmp_path):
    hf, path = hf_checkpoint
    in_memory = {name: t.detach().numpy() for name, t in hf.state_dict().items()}
    save_file(in_memory, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(os.path.join(path, "config.json"), tmp_path / "config.json")
    assert any(k.startswith("model.language_model.") for k in Checkpoint(str(tmp_path)).keys())
    ids = np.arange(10, 30)[None]
    np.testing.assert_array_equal(np.asarray(load_hf(str(tmp_path))(ids)), np.asarray(ours(ids)))


def index_shards(folder):
    """The shard files the index of `folder` lists, sorted."""
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return sorted(set(index["weight_map"].values()))


def test_sharded_hf_checkpoint_loads(ours, tmp_path):
    save_hf(ours, str(tmp_path), max_shard_bytes=10 * 2**20)
    assert len(index_shards(tmp_path)) > 1
    ids = np.arange(5, 25)[None]
    np.testing.assert_array_equal(np.asarray(load_hf(str(tmp_path))(ids)), np.asarray(ours(ids)))


def test_bf16_export_and_reload(hf_checkpoint, ours, tmp_path):
    save_hf(ours, str(tmp_path), dtype="bfloat16")
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    fp32, bf16 = tensors(hf_checkpoint[1]), tensors(str(tmp_path))
    for name, array in fp32.items():  # every tensor is exactly the float32 one rounded to bfloat16
        assert bf16[name].dtype == ml_dtypes.bfloat16, name
        assert bf16[name].tobytes() == array.astype(ml_dtypes.bfloat16).tobytes(), name
    reloaded = load_hf(str(tmp_path), dtype="bfloat16")
    ids = np.arange(5, 25)[None]
    diff = np.abs(np.asarray(reloaded(ids), np.float32) - np.asarray(ours(ids))).max()
    assert 0 < diff < 0.05


@pytest.mark.parametrize("kind", ["copy", "linear", "conv"])
def test_read_part_inverts_to_hf_reading_only_what_it_needs(kind):
    ours = np.random.RandomState(0).randn(24, 6).astype(np.float32)  # conv: 24 = 3 x 2 x 2 x 2 patch values
    hf_shape = keys.hf_shape(kind, ours.shape, (3, 2, 2, 2))
    hf = keys.to_hf(kind, ours, hf_shape)
    requested = []

    def read_hf(index):
        requested.append(hf[index].size)
        return hf[index]

    index = (slice(4, 20), slice(1, 4))
    np.testing.assert_array_equal(keys.read_part(kind, read_hf, index), ours[index])
    assert requested == [ours[index].size if kind != "conv" else 24 * 3]  # conv reads whole patches of 3 channels


def test_mesh_load_reads_each_devices_part_only(hf_checkpoint, ours, monkeypatch):
    reads = []
    read = Checkpoint.read

    def spy(self, name, index=None):
        array = read(self, name, index)
        reads.append((name, array.shape))
        return array

    monkeypatch.setattr(Checkpoint, "read", spy)
    q_name = "model.layers.0.self_attn.q_proj.weight"
    out_features, in_features = Checkpoint(hf_checkpoint[1]).shape(q_name)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = load_hf(hf_checkpoint[1], mesh=mesh)
    q_reads = {shape for name, shape in reads if name == q_name}
    assert q_reads == {(out_features // 2, in_features // 2)}  # the kernel is split by fsdp x tensor
    want = dict(nnx.to_flat_state(nnx.state(ours, nnx.Param)))
    for path, leaf in nnx.to_flat_state(nnx.state(sharded, nnx.Param)):
        np.testing.assert_array_equal(np.asarray(leaf.get_value()), np.asarray(want[path].get_value()), str(path))


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


def rewrite_tensors(folder, edit):
    ckpt = Checkpoint(str(folder))
    arrays = {k: ckpt.read(k) for k in ckpt.keys()}
    del ckpt
    edit(arrays)
    save_file(arrays, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_errors_name_the_file_or_tensor(hf_checkpoint, ours, tmp_path):
    _, path = hf_checkpoint
    with pytest.raises(CheckpointError, match="not a directory"):
        load_hf(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_hf(str(empty))

    llama = copy_checkpoint(path, tmp_path / "llama")
    cfg = json.loads((llama / "config.json").read_text())
    (llama / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(CheckpointError, match="model_type 'llama'"):
        load_hf(str(llama))

    missing = copy_checkpoint(path, tmp_path / "missing")
    rewrite_tensors(missing, lambda a: a.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight .* missing"):
        load_hf(str(missing))

    shaped = copy_checkpoint(path, tmp_path / "shaped")
    rewrite_tensors(shaped, lambda a: a.update({"visual.blocks.0.attn.qkv.weight": np.zeros((10, 32), np.float32)}))
    with pytest.raises(CheckpointError, match=r"visual\.blocks\.0\.attn\.qkv\.weight has shape \(10, 32\)"):
        load_hf(str(shaped))

    truncated = copy_checkpoint(path, tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=re.escape(f"{weights}: not a readable safetensors file")):
        load_hf(str(truncated))

    lost_shard = tmp_path / "lost_shard"
    save_hf(ours, str(lost_shard), max_shard_bytes=10 * 2**20)
    last_shard = index_shards(lost_shard)[-1]
    (lost_shard / last_shard).unlink()
    with pytest.raises(CheckpointError, match=re.escape(f"{last_shard}: listed in model.safetensors.index.json")):
        load_hf(str(lost_shard))

    extra = copy_checkpoint(path, tmp_path / "extra")
    rewrite_tensors(extra, lambda a: a.update({"model.layers.9.foo.weight": np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match="unexpected tensors"):
        load_hf(str(extra))


def run_export(*args):
    return subprocess.run([sys.executable, "-m", "octomed_jax.export", *args], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})


def test_export_cli_both_directions(hf_checkpoint, ours, tmp_path):
    _, path = hf_checkpoint
    help_text = run_export("--helpfull").stdout + run_export("--help").stdout
    assert "--to=hf --checkpoint=WORKDIR/checkpoints/STEP --out=HF_DIR" in help_text
    assert "--to=ours --checkpoint=HF_DIR --out=CKPT" in help_text

    r = run_export("--to=ours", f"--checkpoint={path}", f"--out={tmp_path / 'ours'}")
    assert r.returncode == 0, r.stderr
    assert ckpt_lib.is_model_checkpoint(str(tmp_path / "ours"))
    r = run_export("--to=hf", f"--checkpoint={tmp_path / 'ours'}", f"--out={tmp_path / 'hf'}")
    assert r.returncode == 0, r.stderr
    before, after = tensors(path), tensors(str(tmp_path / "hf"))
    assert all(before[k].tobytes() == after[k].tobytes() for k in before)
    for fname in ("tokenizer.json", "chat_template.jinja", "preprocessor_config.json", "generation_config.json"):
        assert (tmp_path / "hf" / fname).exists(), fname

    r = run_export("--to=ours", f"--checkpoint={tmp_path / 'nowhere'}", f"--out={tmp_path / 'x'}")
    assert r.returncode == 1
    error_lines = [line for line in r.stderr.splitlines() if line.startswith("export: error:")]
    assert len(error_lines) == 1 and "nowhere" in error_lines[0]


def test_our_checkpoint_round_trip(ours, tmp_path):
    ckpt_lib.save_model(ours, str(tmp_path / "ckpt"))
    restored = ckpt_lib.load_model(str(tmp_path / "ckpt"))
    ids = np.arange(5, 25)[None]
    np.testing.assert_array_equal(np.asarray(restored(ids)), np.asarray(ours(ids)))
