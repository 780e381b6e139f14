"""Our Qwen3-VL against transformers' `Qwen3VLForConditionalGeneration`, fp32, on a tiny random config.

Logits within 1e-4 for text only, one image, two images of different sizes (larger and smaller than the
learned position table) and a left-padded batch; the vision tower's merged and DeepStack features; and
HF -> ours -> HF loads in transformers with no missing or unexpected keys, equal tensors and equal logits.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import IMAGE, hf_generate, hf_logits, hf_model, image_prompt, pixels, torch, transformers
from flax import nnx
from safetensors.numpy import load_file

from octomed_jax.contract import ContractError, RunContract
from octomed_jax.generation import Prompt, Sampler, SamplingParams
from octomed_jax.hf import load_hf, save_hf
from octomed_jax.models import positions
from octomed_jax.models.config import from_hf_dict, get_preset
from octomed_jax.models.qwen2_5_vl import ModelInputs
from octomed_jax.models.qwen3_vl import Qwen3VL, VisionInputs
from octomed_jax.sharding import make_mesh

TOL = 1e-4


def max_diff(a, b):
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


@pytest.fixture(scope="module")
def cfg():
    return get_preset("qwen3_vl_tiny")


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory, cfg):
    """(transformers model, its folder): weights at 0.1 so images move the logits; norms and biases perturbed."""
    model = hf_model(cfg, scale=0.1)
    path = tmp_path_factory.mktemp("hf_qwen3_vl")
    model.save_pretrained(path)
    return model, str(path)


@pytest.fixture(scope="module")
def ours(hf_checkpoint):
    return load_hf(hf_checkpoint[1])


def test_config_from_transformers(hf_checkpoint, cfg, ours):
    """The config transformers writes reads back as ours, and load_hf picked the family's class."""
    assert from_hf_dict(hf_checkpoint[0].config.to_dict()) == cfg
    assert type(ours) is Qwen3VL


def test_text_only(ours, hf_checkpoint):
    ids = np.random.RandomState(1).randint(0, 150000, size=(2, 23))
    assert max_diff(ours(ids), hf_logits(hf_checkpoint[0], ids)) <= TOL


def test_one_image(ours, hf_checkpoint, cfg):
    grids = [[1, 8, 12]]  # larger than the 6 x 6 position table: interpolated up
    ids = image_prompt(grids, [5, 7])[None]
    px = pixels(grids, cfg.vision.patch_dim)
    ref = hf_logits(hf_checkpoint[0], ids, px, grids)
    got = np.asarray(ours(ids, px, np.array(grids)))
    assert max_diff(got, ref) <= TOL
    # The image matters well beyond the tolerance: the same prompt with other pixels moves the logits.
    other = np.asarray(ours(ids, px[::-1].copy(), np.array(grids)))
    assert max_diff(other, ref) > 100 * TOL


def test_two_images_of_different_sizes(ours, hf_checkpoint, cfg):
    grids = [[1, 6, 10], [1, 4, 4]]  # one wider than the table, one smaller
    ids = image_prompt(grids, [3, 4, 6])[None]
    px = pixels(grids, cfg.vision.patch_dim, seed=1)
    assert max_diff(ours(ids, px, np.array(grids)), hf_logits(hf_checkpoint[0], ids, px, grids)) <= TOL


def test_batch_of_two_with_padding(ours, hf_checkpoint, cfg):
    """Left padding, an image in each row (mm_token_type_ids passed): positions follow the mask."""
    grids = [[1, 4, 4], [1, 6, 8]]
    a, b = image_prompt(grids[:1], [2, 3], start=3), image_prompt(grids[1:], [6, 5], start=4)
    length = max(len(a), len(b))
    ids = np.zeros((2, length), np.int64)
    mask = np.zeros((2, length), np.int64)
    for row, seq in enumerate((a, b)):
        ids[row, length - len(seq):] = seq
        mask[row, length - len(seq):] = 1
    px = pixels(grids, cfg.vision.patch_dim, seed=2)
    ref = hf_logits(hf_checkpoint[0], ids, px, grids, attention_mask=mask)
    got = np.asarray(ours(ids, px, np.array(grids), mask))
    real = mask.astype(bool)
    assert max_diff(got[real], ref[real]) <= TOL


def test_packed_rows_equal_each_examples_own(ours, cfg):
    """Jit path: row 0 packs examples A and B (segments 1, 2), row 1 holds B then padding; one vision row per
    token row, padded. Every example's logits equal its own unpacked forward (DeepStack lands per row)."""
    grids = {"a": np.array([[1, 4, 4]]), "b": np.array([[1, 4, 6]])}
    ids = {"a": image_prompt(grids["a"], [2, 3], start=7), "b": image_prompt(grids["b"], [3, 2], start=8)}
    px = {k: pixels(g, cfg.vision.patch_dim, seed=6 + i) for i, (k, g) in enumerate(grids.items())}
    pos = {k: positions.rope_index(ids[k][None], grids[k], None, cfg)[0][:, 0] for k in ids}
    la, lb = len(ids["a"]), len(ids["b"])
    length = la + lb + 3
    tokens, segments, pos3 = np.zeros((2, length), np.int64), np.zeros((2, length), np.int32), np.zeros((3, 2, length))
    tokens[0, :la + lb], segments[0, :la + lb] = np.concatenate([ids["a"], ids["b"]]), [1] * la + [2] * lb
    pos3[:, 0, :la + lb] = np.concatenate([pos["a"], pos["b"]], axis=1)
    tokens[1, :lb], segments[1, :lb], pos3[:, 1, :lb] = ids["b"], 1, pos["b"]
    vision = VisionInputs.stack_rows(
        [(np.concatenate([px["a"], px["b"]]), np.concatenate([grids["a"], grids["b"]])), (px["b"], grids["b"])],
        cfg, pad_to=48)
    packed = np.asarray(ours.forward(ModelInputs(input_ids=jnp.asarray(tokens, jnp.int32),
                                                 positions=jnp.asarray(pos3, jnp.int32),
                                                 segment_ids=jnp.asarray(segments), vision=vision)))
    own = {k: np.asarray(ours(ids[k][None], px[k], grids[k]))[0] for k in ids}
    assert max_diff(packed[0, :la], own["a"]) <= TOL
    assert max_diff(packed[0, la:la + lb], own["b"]) <= TOL
    assert max_diff(packed[1, :lb], own["b"]) <= TOL


def test_greedy_decoding_equals_transformers(ours, hf_checkpoint, cfg):
    """KV-cache decoding, DeepStack added in the prefill: a left-padded batch of an image prompt and a text
    prompt, greedy, equals transformers `generate` token for token."""
    grids = np.array([[1, 8, 12]])
    prompts = [Prompt(image_prompt(grids, [5, 7]), pixels(grids, cfg.vision.patch_dim, seed=4), grids),
               Prompt(np.random.RandomState(2).randint(0, 150000, size=9))]
    never = 151999  # a stop id the random model does not produce within the budget
    got = Sampler(ours, stop_token_ids=(never,)).generate(prompts, SamplingParams(max_new_tokens=8))
    want = hf_generate(hf_checkpoint[0], prompts, 8, never)
    assert [c[0].token_ids for c in got] == want
    assert len(set(want[0])) > 1  # not one repeated token


def test_vision_tower(ours, hf_checkpoint, cfg):
    """Merged features and each DeepStack merger's features, two images in one row."""
    grids = [[1, 10, 6], [1, 4, 8]]
    px = pixels(grids, cfg.vision.patch_dim, seed=3)
    with torch.no_grad():
        out = hf_checkpoint[0].model.visual(torch.tensor(px), grid_thw=torch.tensor(grids))
    v = VisionInputs.build(px, np.array(grids), cfg)
    features, deepstack = ours.image_features(v)
    assert max_diff(features[0], out.pooler_output.numpy()) <= TOL
    assert deepstack.shape[0] == len(out.deepstack_features) == 2
    for got, ref in zip(deepstack, out.deepstack_features, strict=True):
        assert max_diff(got[0], ref.numpy()) <= TOL


def test_hf_round_trip(ours, hf_checkpoint, tmp_path):
    """HF -> ours -> HF: transformers loads it with no missing or unexpected keys, equal tensors and logits."""
    hf, src = hf_checkpoint
    save_hf(ours, str(tmp_path))
    back, info = transformers.Qwen3VLForConditionalGeneration.from_pretrained(str(tmp_path), output_loading_info=True)
    assert {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys")} == {
        "missing_keys": [], "unexpected_keys": []}
    original, written = load_file(f"{src}/model.safetensors"), load_file(f"{tmp_path}/model.safetensors")
    assert sorted(written) == sorted(original)
    assert all(np.array_equal(written[k], original[k]) for k in original)
    grids = [[1, 4, 4]]
    ids = image_prompt(grids, [3, 2])[None]
    px = pixels(grids, ours.cfg.vision.patch_dim, seed=5)
    assert max_diff(hf_logits(back.eval(), ids, px, grids), hf_logits(hf, ids, px, grids)) == 0.0


def test_mesh_load_equals_single_device(ours, hf_checkpoint):
    """Sharded loading onto a mesh (each device reads its slice) gives the same parameters, the list-indexed
    DeepStack mergers included (their paths hold list indices)."""
    sharded = load_hf(hf_checkpoint[1], mesh=make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
    want = dict(nnx.to_flat_state(nnx.state(ours, nnx.Param)))
    got = dict(nnx.to_flat_state(nnx.state(sharded, nnx.Param)))
    assert sorted(map(str, got)) == sorted(map(str, want)) and any("deepstack" in str(k) for k in got)
    for path, leaf in got.items():
        np.testing.assert_array_equal(np.asarray(leaf.get_value()), np.asarray(want[path].get_value()), str(path))


def test_image_token_count_checked(ours, cfg):
    ids = np.array([[1, 2, IMAGE, IMAGE, 3]])
    with pytest.raises(ValueError, match="does not match grid"):
        ours.prepare_inputs(ids, pixels([[1, 4, 4]], cfg.vision.patch_dim), np.array([[1, 4, 4]]))


def test_contract_family(cfg):
    """The run contract's family is the model's: an imported Qwen3-VL gets it, a mismatch is refused."""
    assert RunContract.for_model(cfg).family == "qwen3_vl"
    with pytest.raises(ContractError, match="family 'qwen2_5_vl' but model.family 'qwen3_vl'"):
        RunContract(recipe="r", model=cfg, family="qwen2_5_vl")
