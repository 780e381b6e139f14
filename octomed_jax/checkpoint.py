"""Every kind of checkpoint, opened the same way: the model and its run contract.

Three kinds of folder hold a model:

- a training step, `WORKDIR/checkpoints/STEP/` (Orbax items `state`, `data`, `contract`; written by
  `training.checkpointing`). A workdir or its `checkpoints/` folder means its latest step;
- our model folder (`save_model`): `params/` (an Orbax tree) and `octomed_contract.json`;
- a Hugging Face folder: `config.json` + safetensors, with `octomed_contract.json` beside them when we
  exported it (otherwise the contract is read off `config.json` and `preprocessor_config.json`).

`load_run(path)` returns `(model, contract)` for any of them, sharded over a mesh if given; `load_contract`
reads the contract alone (no arrays). Restoring passes `jax.ShapeDtypeStruct` targets that carry the target
shardings, so a checkpoint saved on one mesh restores onto another; a training step restores its parameters
only (not the optimizer moments).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Literal

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from octomed_jax import sharding as sharding_lib
from octomed_jax.contract import CONTRACT_FILE, ContractError, Preprocessing, RunContract
from octomed_jax.hf import CheckpointError
from octomed_jax.models.families import abstract_model
from octomed_jax.models.qwen2_5_vl import Qwen25VL

PARAMS_DIR = "params"
STATE_ITEM = "state"  # the items of a training step (training.checkpointing writes them)
CONTRACT_ITEM = "contract"

Kind = Literal["train_step", "model", "hf"]


@dataclasses.dataclass(frozen=True)
class Located:
    """Where a model lives: its kind, folder and (for a training step) step number."""

    kind: Kind
    path: str
    step: int | None = None


def _is_train_step(path: str) -> bool:
    return os.path.isdir(os.path.join(path, STATE_ITEM)) and os.path.basename(os.path.normpath(path)).isdigit()


def _latest_step(checkpoints: str) -> str | None:
    steps = [int(d) for d in os.listdir(checkpoints) if d.isdigit() and _is_train_step(os.path.join(checkpoints, d))]
    return os.path.join(checkpoints, str(max(steps))) if steps else None


def is_model_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONTRACT_FILE)) and os.path.isdir(os.path.join(path, PARAMS_DIR))


def locate(path: str) -> Located:
    """What `path` is: a training step (a workdir or `checkpoints/` folder: its latest), our model folder, or HF.

    Raises:
      FileNotFoundError: `path` is none of these (the message lists what was looked for).
    """
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such checkpoint folder")
    if _is_train_step(path):
        return Located("train_step", path, int(os.path.basename(path)))
    if is_model_checkpoint(path):
        return Located("model", path)
    if os.path.isfile(os.path.join(path, "config.json")):
        return Located("hf", path)
    for checkpoints in (os.path.join(path, "checkpoints"), path):
        if os.path.isdir(checkpoints) and (step := _latest_step(checkpoints)):
            return Located("train_step", step, int(os.path.basename(step)))
    raise FileNotFoundError(
        f"{path}: not a checkpoint: expected a training step (checkpoints/STEP/ with {STATE_ITEM}/), a workdir or "
        f"checkpoints/ folder holding steps, our model folder ({CONTRACT_FILE} + {PARAMS_DIR}/) or a Hugging Face "
        "folder (config.json + safetensors)"
    )


def load_contract(path: str) -> RunContract:
    """The run contract of any checkpoint (see the module docstring); reads no arrays."""
    loc = locate(path)
    if loc.kind == "train_step":
        return _step_contract(loc.path)
    if loc.kind == "model" or os.path.isfile(os.path.join(loc.path, CONTRACT_FILE)):
        contract = RunContract.load(os.path.join(loc.path, CONTRACT_FILE))
    else:
        contract = _hf_contract(loc.path)
    if os.path.isfile(os.path.join(loc.path, "tokenizer.json")):  # a folder's own tokenizer comes first
        contract = contract.replace(prompting=dataclasses.replace(contract.prompting, tokenizer_path=loc.path))
    return contract


def _step_contract(step_dir: str) -> RunContract:
    item = os.path.join(step_dir, CONTRACT_ITEM)
    if not os.path.isdir(item):
        raise ContractError(
            f"{step_dir}: this training step has no {CONTRACT_ITEM}/ item (saved before run contracts existed, or "
            "damaged); resume the run once to write a new step"
        )
    try:
        raw = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(item)
    except (ValueError, OSError) as e:  # a truncated or unreadable JSON file
        raise ContractError(f"{item}: cannot read the run contract: {e}") from e
    return RunContract.from_dict(raw, where=item)


def _hf_contract(path: str) -> RunContract:
    """A contract for an HF folder we did not write: the model from config.json, preprocessing from its processor."""
    from octomed_jax.models.config import from_hf_dict

    with open(os.path.join(path, "config.json")) as f:
        try:
            model = from_hf_dict(json.load(f))
        except (json.JSONDecodeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{path}/config.json: {e}") from e
    preprocessing = Preprocessing()
    processor = os.path.join(path, "preprocessor_config.json")
    if os.path.isfile(processor):
        with open(processor) as f:
            p = json.load(f)
        size = p.get("size") or {}  # transformers 5 writes the bounds as size.{shortest,longest}_edge
        preprocessing = Preprocessing(
            min_pixels=int(p.get("min_pixels") or size.get("shortest_edge") or preprocessing.min_pixels),
            max_pixels=int(p.get("max_pixels") or size.get("longest_edge") or preprocessing.max_pixels),
            max_tiles=int(p.get("max_patches") or preprocessing.max_tiles),  # InternVL's GotOcr2 processor
        )
    # The family's tokenizer ids (InternVL3.5's is Qwen's plus <img> </img> <IMG_CONTEXT>, at these ids).
    return RunContract.for_model(model, recipe=os.path.basename(path), preprocessing=preprocessing,
                                 special_ids=model.traits.special_ids)


def load_run(
    path: str,
    *,
    mesh: Mesh | None = None,
    rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES,
    **overrides: Any,
) -> tuple[Qwen25VL, RunContract]:
    """The model and run contract of any checkpoint, sharded over `mesh` if given.

    Args:
      path: a training step, workdir, `checkpoints/` folder, our model folder or an HF folder.
      mesh: target mesh; None restores onto the default device.
      rules: logical axis rules for the target mesh.
      **overrides: ModelConfig compute fields to change (`dtype`, `scan_layers`, `remat_policy`,
        `attention_impl`, `attention_block_q`, `attention_block_kv`); the returned contract's model carries them.

    Raises:
      FileNotFoundError: `path` is not a checkpoint. CheckpointError / ContractError: a damaged one (named).
    """
    loc = locate(path)
    contract = load_contract(loc.path)
    if loc.kind == "hf":
        from octomed_jax.hf import load_hf

        m = contract.model.replace(**overrides)
        model = load_hf(loc.path, mesh=mesh, rules=rules, compute_dtype=m.dtype, scan_layers=m.scan_layers,
                        remat_policy=m.remat_policy, attention_impl=m.attention_impl,
                        attention_block_q=m.attention_block_q, attention_block_kv=m.attention_block_kv)
        return model, contract.replace(model=model.cfg)
    cfg = contract.model.replace(**overrides)
    if loc.kind == "train_step":
        params = _restore_params(os.path.join(loc.path, STATE_ITEM), cfg, mesh, rules, within="params")
    else:
        params = _restore_params(os.path.join(loc.path, PARAMS_DIR), cfg, mesh, rules)
    return params, contract.replace(model=cfg)


def _restore_params(
    directory: str, cfg: Any, mesh: Mesh | None, rules: sharding_lib.Rules, *, within: str | None = None
) -> Qwen25VL:
    """Restores the parameter tree at `directory` (or its `within` subtree alone) into a new model."""
    graphdef, abstract_state = nnx.split(abstract_model(cfg))
    params_abstract = nnx.state(nnx.merge(graphdef, abstract_state), nnx.Param)
    if mesh is not None:
        shardings = nnx.to_pure_dict(sharding_lib.state_shardings(params_abstract, mesh, rules))
    else:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, nnx.to_pure_dict(params_abstract))
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nnx.to_pure_dict(params_abstract), shardings)
    try:
        if within is None:
            restored = ocp.StandardCheckpointer().restore(directory, target)
        else:  # a training state: read the parameters, leave the optimizer moments on disk
            tree = {within: target}
            restore_args = ocp.checkpoint_utils.construct_restore_args(tree)
            restored = ocp.PyTreeCheckpointer().restore(
                directory, args=ocp.args.PyTreeRestore(tree, restore_args=restore_args, partial_restore=True)
            )[within]
    except (ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"{directory}: cannot restore the parameters: {e}") from e
    model = nnx.merge(graphdef, abstract_state)
    nnx.replace_by_pure_dict(params_abstract, restored)
    nnx.update(model, params_abstract)
    return model


def save_model(model: Qwen25VL, path: str, contract: RunContract | None = None) -> None:
    """Writes `model`'s parameters and its contract to `path` (every process calls this).

    Args:
      model: the model.
      path: the folder (created).
      contract: the run the model comes from; None: a contract for the model alone (default preprocessing
        and prompting).
    """
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    contract = (contract or RunContract.for_model(model.cfg)).replace(model=model.cfg)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(path, PARAMS_DIR), params, force=True)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        contract.save(path)  # last: a folder without it is not a checkpoint


def load_model(path: str, **kwargs: Any) -> Qwen25VL:
    """The model of any checkpoint (`load_run` without the contract)."""
    return load_run(path, **kwargs)[0]


__all__ = ["CheckpointError", "Located", "is_model_checkpoint", "load_contract", "load_model", "load_run", "locate",
           "save_model"]
