"""Our model checkpoints: the parameter tree in Orbax format plus the model config as JSON.

A model checkpoint folder holds `model_config.json` and `params/` (an Orbax StandardCheckpointer
tree). Restoring onto a mesh passes `jax.ShapeDtypeStruct` targets that carry the new shardings, so a
checkpoint saved on one layout restores onto another.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from octomed_jax import sharding as sharding_lib
from octomed_jax.models.config import ModelConfig, TextConfig, VisionConfig
from octomed_jax.models.qwen2_5_vl import Qwen25VL, abstract_model

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    d = dict(d)
    t = dict(d.pop("text"))
    t["mrope_section"] = tuple(t["mrope_section"])
    v = dict(d.pop("vision"))
    v["fullatt_block_indexes"] = tuple(v["fullatt_block_indexes"])
    return ModelConfig(text=TextConfig(**t), vision=VisionConfig(**v), **d)


def is_model_checkpoint(path: str) -> bool:
    return os.path.exists(os.path.join(path, CONFIG_FILE)) and os.path.isdir(os.path.join(path, PARAMS_DIR))


def save_model(model: Qwen25VL, path: str) -> None:
    """Writes `model`'s parameters and config to `path` (every process calls this)."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(path, PARAMS_DIR), params, force=True)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        with open(os.path.join(path, CONFIG_FILE), "w") as f:
            json.dump(config_to_dict(model.cfg), f, indent=2)


def load_model(
    path: str,
    *,
    mesh: Mesh | None = None,
    rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES,
    **overrides: Any,
) -> Qwen25VL:
    """Restores a model saved by `save_model`, sharded over `mesh` if given.

    Args:
      path: the checkpoint folder.
      mesh: target mesh; None restores onto the default device.
      rules: logical axis rules for the target mesh.
      **overrides: ModelConfig fields to change (compute dtype, scan_layers, remat_policy).
    """
    path = os.path.abspath(path)
    if not is_model_checkpoint(path):
        raise FileNotFoundError(f"{path}: not a model checkpoint (expected {CONFIG_FILE} and {PARAMS_DIR}/)")
    with open(os.path.join(path, CONFIG_FILE)) as f:
        cfg = config_from_dict(json.load(f)).replace(**overrides)
    graphdef, abstract_state = nnx.split(abstract_model(cfg))
    params_abstract = nnx.state(nnx.merge(graphdef, abstract_state), nnx.Param)
    if mesh is not None:
        shardings = sharding_lib.state_shardings(params_abstract, mesh, rules)
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            nnx.to_pure_dict(params_abstract),
            nnx.to_pure_dict(shardings),
        )
    else:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), nnx.to_pure_dict(params_abstract)
        )
    restored = ocp.StandardCheckpointer().restore(os.path.join(path, PARAMS_DIR), target)
    model = nnx.merge(graphdef, abstract_state)
    nnx.replace_by_pure_dict(params_abstract, restored)
    nnx.update(model, params_abstract)
    return model
