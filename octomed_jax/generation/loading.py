"""Opening a checkpoint for inference: our `save_model` folder or a Hugging Face folder, and its tokenizer."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from octomed_jax import sharding as sharding_lib

if TYPE_CHECKING:
    from jax.sharding import Mesh
    from transformers import PreTrainedTokenizerFast

    from octomed_jax.models.qwen2_5_vl import Qwen25VL


def load_checkpoint(
    path: str,
    *,
    mesh: Mesh | None = None,
    rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES,
    dtype: str | None = None,
) -> Qwen25VL:
    """Loads a model from our checkpoint folder (`checkpoint.save_model`) or a Hugging Face folder.

    Args:
      path: the folder.
      mesh: shard the parameters over it by `rules` (tensor-parallel decoding).
      rules: logical axis rules.
      dtype: compute dtype ("bfloat16" for speed); None keeps the checkpoint's (HF folders: float32).

    Raises:
      FileNotFoundError: `path` is neither kind of checkpoint.
    """
    from octomed_jax.checkpoint import is_model_checkpoint, load_model
    from octomed_jax.hf import load_hf

    overrides: dict[str, Any] = {"dtype": dtype} if dtype else {}
    if is_model_checkpoint(path):
        return load_model(path, mesh=mesh, rules=rules, **overrides)
    if os.path.exists(os.path.join(path, "config.json")):
        return load_hf(path, mesh=mesh, rules=rules, compute_dtype=dtype)
    raise FileNotFoundError(f"{path}: neither our model checkpoint (model_config.json + params/) nor an HF folder")


def load_checkpoint_tokenizer(path: str | None, tokenizer_path: str | None = None) -> PreTrainedTokenizerFast:
    """The tokenizer beside a checkpoint (its tokenizer.json), else `tokenizer_path`, else the default files."""
    from octomed_jax.data.tokenizer import load_tokenizer

    if tokenizer_path:
        return load_tokenizer(tokenizer_path)
    if path and os.path.exists(os.path.join(path, "tokenizer.json")):
        return load_tokenizer(path)
    return load_tokenizer()


def parse_mesh(spec: str) -> Mesh | None:
    """`"data=2,tensor=4"` -> a mesh (one size may be -1); "" -> None (one device)."""
    if not spec:
        return None
    shape = {}
    for part in spec.split(","):
        name, _, size = part.partition("=")
        shape[name.strip()] = int(size)
    return sharding_lib.make_mesh(shape)


__all__ = ["load_checkpoint", "load_checkpoint_tokenizer", "parse_mesh"]
