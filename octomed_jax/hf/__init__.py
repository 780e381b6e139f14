"""Hugging Face interop: `load_hf` reads a Qwen2.5-VL, Qwen3-VL or InternVL checkpoint folder, `save_hf` writes one.

The family is config.json's `model_type` (`models.config.FAMILIES`); the model class is the family's
(`models.families`).

`load_hf` reads config.json and safetensors (one file or shards with an index; the legacy key layout
or transformers 5.x's `model.language_model.*`). Given a mesh, every parameter is built with
`jax.make_array_from_callback`, so each host reads from the files (`safe_open(...).get_slice`) only the
slices of the tensors that land on its own devices. `save_hf` writes the legacy layout for Qwen2.5-VL,
the `model.language_model.*` layout for Qwen3-VL and the llava layout for InternVL (as their Hub checkpoints),
which each family's transformers class (`...ForConditionalGeneration.from_pretrained`) loads with no missing
or unexpected keys.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from octomed_jax import sharding as sharding_lib
from octomed_jax.data.tokenizer import QWEN_SPECIAL_IDS, SpecialIds
from octomed_jax.hf import keys
from octomed_jax.hf.safetensors_io import Checkpoint, LazyTensor, save_sharded
from octomed_jax.models.config import ModelConfig, from_hf_dict, to_hf_dict
from octomed_jax.models.families import abstract_model
from octomed_jax.models.qwen2_5_vl import Qwen25VL

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the file or tensor."""


def read_config(path: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of an HF checkpoint folder's config.json."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory")
    if not os.path.exists(config_path):
        raise CheckpointError(f"{config_path}: missing (is {path} a Hugging Face checkpoint folder?)")
    try:
        with open(config_path) as f:
            return from_hf_dict(json.load(f), **overrides)
    except (json.JSONDecodeError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{config_path}: {e}") from e


def _param_maps(model_state: Any) -> list[tuple[tuple[str, ...], Any, keys.TensorMap]]:
    out = []
    for path, leaf in nnx.to_flat_state(model_state):
        path = tuple(str(p) for p in path)
        out.append((path, leaf, keys.tensor_map(path, tuple(leaf.get_value().shape))))
    return out


def load_hf(
    path: str,
    *,
    dtype: str = "float32",
    compute_dtype: str | None = None,
    mesh: Mesh | None = None,
    rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES,
    **overrides: Any,
) -> Qwen25VL:
    """Loads a Qwen2.5-VL or Qwen3-VL checkpoint folder into our model of its family.

    Args:
      path: folder with config.json and model.safetensors (or shards and an index).
      dtype: parameter dtype ("float32" master weights, or "bfloat16").
      compute_dtype: activation dtype; defaults to `dtype`.
      mesh: if given, parameters are sharded over it by `rules`, each host reading only its shards.
      rules: logical axis rules (see `octomed_jax.sharding`).
      **overrides: other ModelConfig fields (scan_layers, remat_policy, ...).

    Raises:
      CheckpointError: a missing file, another architecture, a missing, unexpected or wrongly
        shaped tensor; the message names it.
    """
    cfg = read_config(path, param_dtype=dtype, dtype=compute_dtype or dtype, **overrides)
    try:
        ckpt = Checkpoint(path)
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(str(e)) from e
    new_layout = any(k.startswith("model.language_model.") for k in ckpt.keys())
    hf_key = {keys.to_legacy(k): k for k in ckpt.keys()}

    abstract = abstract_model(cfg)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = None  # our parameter path (as `_param_maps` writes it: list indices as strings) -> sharding
    if mesh is not None:
        flat_shardings = nnx.to_flat_state(sharding_lib.state_shardings(abstract_state, mesh, rules))
        shardings = {tuple(str(k) for k in key): _value(leaf) for key, leaf in flat_shardings}
    param_dtype = cfg.jnp_param_dtype
    patch_shape = _patch_shape(cfg)
    expected_names: set[str] = set()

    def check(name: str, kind: keys.Kind, shape: tuple[int, ...]) -> None:
        if name not in hf_key:
            layout = "model.language_model.*" if new_layout else "legacy"
            raise CheckpointError(f"{path}: tensor {name} ({layout} layout) is missing")
        stored = hf_key[name]
        found, expected = ckpt.shape(stored), keys.hf_shape(kind, shape, patch_shape)
        if found != expected:
            raise CheckpointError(
                f"{ckpt.where(stored)}: tensor {stored} has shape {found}, expected {expected} for this config"
            )

    def part(name: str, kind: keys.Kind, index: tuple[slice, ...]) -> np.ndarray:
        array = keys.read_part(kind, lambda hf_index: ckpt.read(hf_key[name], hf_index), index)
        return np.asarray(array, dtype=param_dtype)

    flat = []
    for p, leaf, tmap in _param_maps(abstract_state):
        names = tmap.hf_names()
        expected_names.update(names)
        shape = tuple(leaf.get_value().shape)
        layer_shape = shape[1:] if tmap.num_layers is not None else shape
        for name in names:
            check(name, tmap.kind, layer_shape)

        def slice_of(index: tuple[slice, ...], names=names, tmap=tmap) -> np.ndarray:
            if tmap.num_layers is None:
                return part(names[0], tmap.kind, index)
            layers = range(tmap.num_layers)[index[0]]
            return np.stack([part(names[i], tmap.kind, index[1:]) for i in layers])

        if shardings is None:
            value = jnp.asarray(slice_of(tuple(slice(None) for _ in shape)))
        else:
            sharding = shardings[p]
            value = jax.make_array_from_callback(shape, sharding, slice_of)
        flat.append((p, leaf.replace(value)))

    tied_head = {"lm_head.weight"} if cfg.text.tie_word_embeddings else set()
    unexpected = sorted(set(hf_key) - expected_names - tied_head)
    if unexpected:
        more = f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""
        raise CheckpointError(f"{path}: unexpected tensors {unexpected[:3]}{more}: not a {cfg.family} checkpoint?")
    state = nnx.from_flat_state(flat)
    return nnx.merge(graphdef, state)


def _patch_shape(cfg: ModelConfig) -> tuple[int, ...]:
    """The trailing axes of the HF patch embedding (Conv3d) weight: channels, time, height, width (InternVL's
    Conv2d: no time axis)."""
    v = cfg.vision
    if cfg.traits.tiled:
        return (v.in_channels, v.patch_size, v.patch_size)
    return (v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)


def _value(leaf: Any) -> Any:
    return leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf


def _to_host(x: jax.Array) -> np.ndarray:
    if jax.process_count() > 1 and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def save_hf(
    model: Qwen25VL,
    path: str,
    *,
    dtype: str | None = None,
    tokenizer_dir: str | None = None,
    chat_template: str | None = None,
    processor_config: dict[str, Any] | None = None,
    special_ids: SpecialIds = QWEN_SPECIAL_IDS,
    max_shard_bytes: int = 5 * 10**9,
) -> None:
    """Writes `model` as a Hugging Face checkpoint folder (its family's key layout).

    Args:
      model: our model (sharded or not; every process must call this, process 0 writes).
      path: output folder (created).
      dtype: tensor dtype in the files; defaults to the parameter dtype.
      tokenizer_dir: a folder whose tokenizer files are copied beside the weights.
      chat_template: the Jinja chat template to ship (tokenizer_config.json and chat_template.jinja).
      processor_config: preprocessor_config.json contents for the image processor.
      special_ids: the tokenizer's special ids (generation_config.json's bos, eos and pad).
      max_shard_bytes: largest safetensors shard; process 0 holds one whole shard in host memory while
        writing it, so this bounds the export's memory (transformers 5 defaults to 50 GB shards).
    """
    cfg = model.cfg
    out_dtype = np.dtype(jnp.dtype(dtype or cfg.param_dtype))
    state = nnx.state(model, nnx.Param)
    patch_shape = _patch_shape(cfg)
    tensors = []
    for _, leaf, tmap in _param_maps(state):
        value = leaf.get_value()
        for i, name in enumerate(keys.to_family_layout(n, cfg.family) for n in tmap.hf_names()):
            layer_shape = value.shape[1:] if tmap.num_layers is not None else value.shape
            shape = keys.hf_shape(tmap.kind, tuple(layer_shape), patch_shape)

            def produce(value=value, i=i, tmap=tmap, shape=shape) -> np.ndarray:
                array = _to_host(value[i] if tmap.num_layers is not None else value)
                return keys.to_hf(tmap.kind, array, shape).astype(out_dtype)

            tensors.append(LazyTensor(name, shape, out_dtype, produce))
    tensors.sort(key=lambda t: _natural_key(t.name))
    is_writer = jax.process_index() == 0
    if is_writer:
        os.makedirs(path, exist_ok=True)
    if is_writer:
        save_sharded(tensors, path, max_shard_bytes)
    else:  # the others still take part in every all-gather
        for t in tensors:
            t.produce()
    if not is_writer:
        return
    torch_dtype = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[out_dtype.name]
    _write_json(os.path.join(path, "config.json"), to_hf_dict(cfg, torch_dtype=torch_dtype, special_ids=special_ids))
    _write_json(
        os.path.join(path, "generation_config.json"),
        {"bos_token_id": special_ids.endoftext, "eos_token_id": list(special_ids.stop_ids),
         "pad_token_id": special_ids.pad},
    )
    if tokenizer_dir is not None:
        for fname in TOKENIZER_FILES:
            if os.path.exists(os.path.join(tokenizer_dir, fname)):
                shutil.copyfile(os.path.join(tokenizer_dir, fname), os.path.join(path, fname))
    if chat_template is not None:
        with open(os.path.join(path, "chat_template.jinja"), "w") as f:
            f.write(chat_template)
        tok_cfg_path = os.path.join(path, "tokenizer_config.json")
        if os.path.exists(tok_cfg_path):
            with open(tok_cfg_path) as f:
                tok_cfg = json.load(f)
            tok_cfg["chat_template"] = chat_template
            _write_json(tok_cfg_path, tok_cfg)
    if processor_config is not None:
        _write_json(os.path.join(path, "preprocessor_config.json"), processor_config)


def _natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in name.split(".")]


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


__all__ = ["CheckpointError", "load_hf", "read_config", "save_hf"]
