"""A model as a Hugging Face folder that serves exactly as it was trained.

Beside the weights (`save_hf`): the tokenizer the run used, the chat template with the run's default system
prompt, `preprocessor_config.json` with the run's pixel bounds, `generation_config.json` with its special ids,
and the run contract itself (`octomed_contract.json`), so `evaluate` and `serve` on the export read the same
settings as on the training step it came from.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from octomed_jax.contract import RunContract

if TYPE_CHECKING:
    from octomed_jax.models.qwen2_5_vl import Qwen25VL


def export_for_serving(
    model: Qwen25VL, contract: RunContract, out: str, *, dtype: str | None = None, tokenizer: str | None = None
) -> None:
    """Writes `model` and its serving files to `out` (every process calls this; process 0 writes).

    Args:
      model: the model.
      contract: the run it comes from (`checkpoint.load_run` gives both).
      out: the folder.
      dtype: tensor dtype of the weights (None: as stored).
      tokenizer: tokenizer folder to ship (None: the contract's, else the packaged Qwen files).
    """
    import jax

    from octomed_jax.data import template
    from octomed_jax.data import tokenizer as tok_lib
    from octomed_jax.hf import save_hf

    contract = contract.replace(model=model.cfg)
    save_hf(
        model,
        out,
        dtype=dtype,
        tokenizer_dir=tokenizer or contract.prompting.tokenizer_path or tok_lib.default_tokenizer_dir(),
        chat_template=template.chat_template(contract.prompting.system_prompt, template=contract.prompting.template),
        processor_config=contract.preprocessing.processor_config(contract.model),
        special_ids=contract.special_ids,
    )
    if jax.process_index() == 0:
        # The export ships its tokenizer: readers take the one beside the weights, not the training machine's path.
        prompting = dataclasses.replace(contract.prompting, tokenizer_path=None)
        contract.replace(prompting=prompting).save(os.path.abspath(out))


def checkpoint_to_hf(checkpoint: str, out: str, *, dtype: str | None = None, tokenizer: str | None = None) -> None:
    """Any checkpoint (a training step, workdir, our model folder) -> an HF folder with its serving files."""
    from octomed_jax.checkpoint import load_run

    model, contract = load_run(checkpoint)
    export_for_serving(model, contract, out, dtype=dtype, tokenizer=tokenizer)


def hf_to_checkpoint(hf_dir: str, out: str, *, dtype: str | None = None) -> None:
    """An HF Qwen2.5-VL folder (legacy or `model.language_model.*` layout) -> our model folder."""
    from octomed_jax.checkpoint import load_contract, save_model
    from octomed_jax.hf import load_hf

    model = load_hf(hf_dir, **({"dtype": dtype} if dtype else {}))
    save_model(model, out, load_contract(hf_dir))


__all__ = ["checkpoint_to_hf", "export_for_serving", "hf_to_checkpoint"]
