"""What the server loads from a checkpoint: the model, its tokenizer and its run contract (`load_for_serving`)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from octomed_jax.serving.openai_api import ServeConfig

if TYPE_CHECKING:
    from jax.sharding import Mesh
    from transformers import PreTrainedTokenizerFast

    from octomed_jax.contract import RunContract
    from octomed_jax.models.qwen2_5_vl import Qwen25VL


@dataclasses.dataclass(frozen=True)
class ServingModel:
    """A model ready to serve, the tokenizer that goes with it and the run it comes from."""

    model: Qwen25VL
    tokenizer: PreTrainedTokenizerFast
    contract: RunContract

    def serve_config(self, **limits: Any) -> ServeConfig:
        """A `ServeConfig` whose prompting and preprocessing are the run's: its default system prompt, its
        pixel bounds, its image options (the family's parameters; InternVL: the run's `max_tiles`) and its stop
        ids; `limits` set the rest (request sizes, batching, ...)."""
        return ServeConfig(
            system_prompt=self.contract.prompting.system_prompt,
            template=self.contract.prompting.template,
            min_pixels=self.contract.preprocessing.min_pixels,
            max_pixels=self.contract.preprocessing.max_pixels,
            image_family=tuple((k, v) for k, v in self.contract.preprocessing.image_options(self.contract.model).items()
                               if k not in ("min_pixels", "max_pixels")),  # the run's tiling too (InternVL)
            stop_ids=self.contract.special_ids.stop_ids,
            **limits,
        )


def load_for_serving(
    checkpoint: str, *, mesh: Mesh | None = None, dtype: str | None = None, tokenizer_path: str | None = None
) -> ServingModel:
    """Loads what the server runs from any checkpoint (`checkpoint.locate`: a training step or workdir, our model
    folder, an HF folder).

    Args:
      checkpoint: the folder.
      mesh: shard the parameters over it (tensor-parallel decoding); None: one device.
      dtype: compute dtype (e.g. "bfloat16"); None keeps the checkpoint's.
      tokenizer_path: a tokenizer folder; None: the run contract's (the folder's own tokenizer.json first).

    Raises:
      FileNotFoundError: `checkpoint` is not a checkpoint. ValueError: a damaged one (named).
    """
    from octomed_jax.checkpoint import load_run
    from octomed_jax.data.tokenizer import load_tokenizer

    model, contract = load_run(checkpoint, mesh=mesh, **({"dtype": dtype} if dtype else {}))
    return ServingModel(model, load_tokenizer(tokenizer_path or contract.prompting.tokenizer_path,
                                                special_ids=contract.special_ids), contract)


__all__ = ["ServingModel", "load_for_serving"]
