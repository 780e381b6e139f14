"""Our InternVL against transformers' `InternVLForConditionalGeneration` (Qwen3 text), fp32, on a tiny random config.

Logits within 1e-4 for text only, one image (two tiles), two images (three tiles and one), a left-padded batch and
a packed row (each example's logits its own); the vision tower alone and the projected image features (the
InternViT-300M layout, and the InternViT-6B one: RMSNorm, q/k norms, no q/k/v biases); HF -> ours -> HF gives
the same tensors, which transformers loads with no missing or unexpected keys; sharded loading onto a mesh.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import hf_model, torch, transformers
from flax import nnx
from safetensors.numpy import load_file

from octomed_jax.generation.sampler import Prompt, Sampler, SamplingParams
from octomed_jax.hf import load_hf, save_hf
from octomed_jax.models.config import from_hf_dict, get_preset
from octomed_jax.models.internvl import InternVL, VisionInputs, positions_1d
from octomed_jax.models.qwen2_5_vl import ModelInputs
from octomed_jax.sharding import make_mesh

TOL = 1e-4
IMG, IMG_START, IMG_END = 151671, 151669, 151670
TOKENS_PER_TILE = 9  # 84-pixel tiles, 14-pixel patches: 6 x 6 -> pixel shuffle -> 3 x 3


def max_diff(a, b):
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


def image_prompt(tiles_per_image, text_lens, seed):
    """Text, then for each image <img> <IMG_CONTEXT> x (tiles * 9) </img>, then more text."""
    rng = np.random.RandomState(seed)
    ids = list(rng.randint(10, 1000, size=text_lens[0]))
    for tiles, n_text in zip(tiles_per_image, text_lens[1:], strict=True):
        ids += [IMG_START] + [IMG] * (tiles * TOKENS_PER_TILE) + [IMG_END] + list(rng.randint(10, 1000, size=n_text))
    return np.array(ids)


def tiles(n, seed):
    return np.random.RandomState(seed).randn(n, 3, 84, 84).astype(np.float32)


def hf_logits(model, ids, px=None, attention_mask=None, position_ids=None):
    kwargs = {"input_ids": torch.tensor(ids)}
    if px is not None:
        kwargs["pixel_values"] = torch.tensor(px)
    if attention_mask is not None:
        kwargs["attention_mask"] = torch.tensor(attention_mask)
    if position_ids is not None:
        kwargs["position_ids"] = torch.tensor(position_ids, dtype=torch.long)
    with torch.no_grad():
        return model(**kwargs).logits.numpy()


def hf_image_features(model, px):
    with torch.no_grad():
        return model.model.get_image_features(pixel_values=torch.tensor(px)).pooler_output.numpy()


@pytest.fixture(scope="module")
def cfg():
    return get_preset("internvl_tiny")


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory, cfg):
    """(transformers model, its folder): every weight at 0.1 (norm weights around 1) so images move the logits."""
    model = hf_model(cfg, scale=0.1)
    path = tmp_path_factory.mktemp("hf_internvl")
    model.save_pretrained(path)
    return model, str(path)


@pytest.fixture(scope="module")
def ours(hf_checkpoint):
    return load_hf(hf_checkpoint[1])


@pytest.fixture(scope="module")
def run(ours):
    """`ours(...)` through one jitted forward (compiled once per shape; eager calls re-trace the layer scans)."""
    forward = nnx.jit(lambda model, inputs: model.forward(inputs))
    return lambda *args: np.asarray(forward(ours, args[0] if isinstance(args[0], ModelInputs) else
                                            ours.prepare_inputs(*args)))


ONE_IMAGE = {"ids": image_prompt([2], [5, 7], seed=1), "px": tiles(2, seed=1)}  # a tile and its thumbnail, say


def test_config_from_transformers(hf_checkpoint, cfg, ours):
    """The config transformers writes reads back as ours, load_hf picked the family's class, and a field our model
    does not implement is refused by name."""
    d = hf_checkpoint[0].config.to_dict()
    assert from_hf_dict(d) == cfg
    assert type(ours) is InternVL
    with pytest.raises(ValueError, match="text_config.model_type is 'qwen2'"):
        from_hf_dict({**d, "text_config": {**d["text_config"], "model_type": "qwen2"}})


def test_text_only(run, hf_checkpoint):
    ids = np.random.RandomState(1).randint(0, 150000, size=(2, 23))
    assert max_diff(run(ids), hf_logits(hf_checkpoint[0], ids)) <= TOL


def test_one_image(run, hf_checkpoint):
    ids, px = ONE_IMAGE["ids"][None], ONE_IMAGE["px"]
    ref = hf_logits(hf_checkpoint[0], ids, px)
    assert max_diff(run(ids, px, [2]), ref) <= TOL
    # The image matters well beyond the tolerance: other pixels move the logits.
    assert max_diff(run(ids, px[::-1].copy(), [2]), ref) > 100 * TOL


def test_two_images(run, hf_checkpoint):
    ids = image_prompt([3, 1], [3, 4, 6], seed=2)[None]
    px = tiles(4, seed=2)
    assert max_diff(run(ids, px, [3, 1]), hf_logits(hf_checkpoint[0], ids, px)) <= TOL


def test_batch_of_two_with_padding(run, hf_checkpoint):
    """Left padding, an image in each row; transformers given the positions `generate` derives from the mask."""
    a, b = image_prompt([1], [2, 3], seed=3), image_prompt([2], [6, 5], seed=4)
    length = max(len(a), len(b))
    ids, mask = np.zeros((2, length), np.int64), np.zeros((2, length), np.int64)
    for row, seq in enumerate((a, b)):
        ids[row, length - len(seq):], mask[row, length - len(seq):] = seq, 1
    px = tiles(3, seed=5)
    ref = hf_logits(hf_checkpoint[0], ids, px, attention_mask=mask, position_ids=positions_1d(mask)[0][0])
    got = run(ids, px, [1, 2], mask)
    real = mask.astype(bool)
    assert max_diff(got[real], ref[real]) <= TOL


def test_packed_rows_equal_each_examples_own(ours, run):
    """Row 0 packs examples A and B (segments 1, 2), row 1 holds B then padding; one vision row per token row,
    padded with zero tiles. Every example's logits equal its own unpacked forward."""
    ids = {"a": ONE_IMAGE["ids"], "b": image_prompt([1], [3, 2], seed=8)}
    px = {"a": ONE_IMAGE["px"], "b": tiles(1, seed=8)}
    la, lb = len(ids["a"]), len(ids["b"])
    length = la + lb + 3
    tokens, segments = np.zeros((2, length), np.int64), np.zeros((2, length), np.int32)
    tokens[0, :la + lb], segments[0, :la + lb] = np.concatenate([ids["a"], ids["b"]]), [1] * la + [2] * lb
    tokens[1, :lb], segments[1, :lb] = ids["b"], 1
    pos = np.zeros((3, 2, length), np.int32)
    pos[:, 0, :la + lb] = np.concatenate([np.arange(la), np.arange(lb)])
    pos[:, 1, :lb] = np.arange(lb)
    vision = VisionInputs.stack_rows([(np.concatenate([px["a"], px["b"]]), [2, 1]), (px["b"], [1])], ours.cfg)
    assert vision.pixel_values.shape[:2] == (2, 3)
    packed = run(ModelInputs(input_ids=jnp.asarray(tokens, jnp.int32), positions=jnp.asarray(pos),
                             segment_ids=jnp.asarray(segments), vision=vision))
    own = {k: run(ids[k][None], px[k])[0] for k in ids}
    assert max_diff(packed[0, :la], own["a"]) <= TOL
    assert max_diff(packed[0, la:la + lb], own["b"]) <= TOL
    assert max_diff(packed[1, :lb], own["b"]) <= TOL


def test_vision_tower(ours, hf_checkpoint):
    """InternViT's last hidden states ([CLS] included), and the pixel-shuffled, projected features."""
    px = tiles(3, seed=9)
    with torch.no_grad():
        ref = hf_checkpoint[0].model.vision_tower(pixel_values=torch.tensor(px)).last_hidden_state.numpy()
    assert max_diff(ours.vision_tower(jnp.asarray(px)), ref) <= TOL
    features, per_layer = ours.image_features(VisionInputs.build(px, [3], ours.cfg))
    assert per_layer is None and features.shape == (1, 3 * TOKENS_PER_TILE, ours.cfg.text.hidden_size)
    assert max_diff(features[0], hf_image_features(hf_checkpoint[0], px).reshape(features.shape[1:])) <= TOL


def test_vision_tower_6b_layout(cfg, tmp_path):
    """InternViT-6B's layout (the 38B): RMSNorm layers, q/k RMSNorm over all heads, no q/k/v biases."""
    cfg6 = cfg.replace(vision=dataclasses.replace(cfg.vision, norm_type="rms_norm", use_qk_norm=True,
                                                  attention_bias=False))
    hf = hf_model(cfg6, scale=0.1, seed=1)
    hf.save_pretrained(tmp_path)
    model = load_hf(str(tmp_path))
    assert model.cfg == cfg6
    px = tiles(2, seed=10)
    features, _ = model.image_features(VisionInputs.build(px, [2], cfg6))
    assert max_diff(features[0], hf_image_features(hf, px).reshape(features.shape[1:])) <= TOL


def test_hf_round_trip(ours, hf_checkpoint, tmp_path):
    """HF -> ours -> HF: the same tensors under the same names (the llava layout transformers saves), which
    transformers loads with no missing or unexpected keys and equal logits."""
    hf, src = hf_checkpoint
    save_hf(ours, str(tmp_path))
    back, info = transformers.InternVLForConditionalGeneration.from_pretrained(str(tmp_path), output_loading_info=True)
    assert {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys")} == {
        "missing_keys": [], "unexpected_keys": []}
    original, written = load_file(f"{src}/model.safetensors"), load_file(f"{tmp_path}/model.safetensors")
    assert sorted(written) == sorted(original) and "language_model.lm_head.weight" in written
    assert all(written[k].dtype == original[k].dtype and np.array_equal(written[k], original[k]) for k in original)
    ids = image_prompt([1], [3, 2], seed=11)[None]
    px = tiles(1, seed=11)
    assert max_diff(hf_logits(back.eval(), ids, px), hf_logits(hf, ids, px)) == 0.0


def test_mesh_load_equals_single_device(ours, hf_checkpoint):
    """Sharded loading onto a mesh (each device reads its slice) gives the same parameters."""
    sharded = load_hf(hf_checkpoint[1], mesh=make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
    want = dict(nnx.to_flat_state(nnx.state(ours, nnx.Param)))
    got = dict(nnx.to_flat_state(nnx.state(sharded, nnx.Param)))
    assert sorted(map(str, got)) == sorted(map(str, want))
    for path, leaf in got.items():
        np.testing.assert_array_equal(np.asarray(leaf.get_value()), np.asarray(want[path].get_value()), str(path))


def test_tile_counts_checked(ours):
    ids = np.array([[1, 2] + [IMG] * TOKENS_PER_TILE + [3]])
    with pytest.raises(ValueError, match="9 <IMG_CONTEXT> tokens but the 2 tiles give 18 features"):
        ours.prepare_inputs(ids, tiles(2, seed=0))
    with pytest.raises(ValueError, match=r"tiles_per_image \[2\] sums to 2, but pixel_values holds 1 tiles"):
        ours.prepare_inputs(ids, tiles(1, seed=0), [2])


def test_greedy_decoding_equals_transformers(ours, hf_checkpoint):
    """KV-cache decoding with 1-D positions (`positions.prompt_positions`): a left-padded batch of an image prompt
    (two tiles, in the data path's patch layout) and a text prompt, greedy, equals transformers `generate`."""
    px = tiles(2, seed=4)
    prompts = [Prompt(image_prompt([2], [5, 7], seed=3), px.reshape(2 * 36, -1), np.array([[2, 6, 6]])),
               Prompt(np.random.RandomState(2).randint(0, 150000, size=9))]
    never = 151999  # a stop id the random model does not produce within the budget
    got = Sampler(ours, stop_token_ids=(never,)).generate(prompts, SamplingParams(max_new_tokens=8))
    length = max(len(p.token_ids) for p in prompts)
    ids, mask = np.zeros((2, length), np.int64), np.zeros((2, length), np.int64)
    for r, p in enumerate(prompts):
        ids[r, length - len(p.token_ids):], mask[r, length - len(p.token_ids):] = p.token_ids, 1
    with torch.no_grad():
        out = hf_checkpoint[0].generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                                        pixel_values=torch.tensor(px), do_sample=False, max_new_tokens=8,
                                        eos_token_id=never, pad_token_id=0)
    want = out[:, length:].numpy().tolist()
    assert [c[0].token_ids for c in got] == want
    assert len(set(want[0])) > 1  # not one repeated token
