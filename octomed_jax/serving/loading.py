"""What the server loads from a checkpoint folder: the model and its tokenizer (`load_for_serving`)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jax.sharding import Mesh
    from transformers import PreTrainedTokenizerFast

    from octomed_jax.models.qwen2_5_vl import Qwen25VL


@dataclasses.dataclass(frozen=True)
class ServingModel:
    """A model ready to serve and the tokenizer that goes with it."""

    model: Qwen25VL
    tokenizer: PreTrainedTokenizerFast


def load_for_serving(
    checkpoint: str, *, mesh: Mesh | None = None, dtype: str | None = None, tokenizer_path: str | None = None
) -> ServingModel:
    """Loads the model and tokenizer the server runs, from our checkpoint folder or a Hugging Face folder.

    Args:
      checkpoint: the folder (`checkpoint.save_model` output or an HF folder).
      mesh: shard the parameters over it (tensor-parallel decoding); None: one device.
      dtype: compute dtype (e.g. "bfloat16"); None keeps the checkpoint's.
      tokenizer_path: a tokenizer folder; None: the checkpoint's tokenizer.json, else the bundled Qwen files.

    Raises:
      FileNotFoundError: `checkpoint` is neither kind of checkpoint.
    """
    from octomed_jax.generation.loading import load_checkpoint, load_checkpoint_tokenizer

    model = load_checkpoint(checkpoint, mesh=mesh, dtype=dtype)
    return ServingModel(model, load_checkpoint_tokenizer(checkpoint, tokenizer_path))


__all__ = ["ServingModel", "load_for_serving"]
