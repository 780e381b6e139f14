"""Convert between checkpoints and Hugging Face folders.

  python -m octomed_jax.export --to=hf --checkpoint=WORKDIR/checkpoints/STEP --out=HF_DIR [--dtype=bfloat16]
      any step of a training run (or a workdir: its latest step, or our model folder) -> an HF folder that
      `Qwen2_5_VLForConditionalGeneration.from_pretrained` loads, with the run's tokenizer, chat template
      (its system prompt), image processor config (its max_pixels) and run contract beside it;
  python -m octomed_jax.export --to=ours --checkpoint=HF_DIR --out=CKPT
      an HF Qwen2.5-VL folder (legacy or model.language_model.* layout) -> our model folder.

Errors (a bad path, another architecture, a missing or wrongly shaped tensor, a damaged contract) print one
line naming the file or tensor and exit with status 1. The work is done by `octomed_jax.hf.export`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import app, flags


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The command-line flags; defined only when run as a program, so importing this module defines none."""
    flags.DEFINE_enum("to", None, ["hf", "ours"], "Direction: 'hf' (ours -> Hugging Face) or 'ours' (HF -> ours).",
                      flag_values=flag_values)
    flags.DEFINE_string("checkpoint", None, "Input: a training step, workdir or our model folder (--to=hf); an HF "
                        "folder (--to=ours).", flag_values=flag_values)
    flags.DEFINE_string("out", None, "Output folder.", flag_values=flag_values)
    flags.DEFINE_string("dtype", None, "Tensor dtype of the output (default: as stored).", flag_values=flag_values)
    flags.DEFINE_string("tokenizer", None, "Tokenizer folder to ship with an HF export (default: the run's).",
                        flag_values=flag_values)
    flags.mark_flags_as_required(["to", "checkpoint", "out"], flag_values=flag_values)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from octomed_jax.hf.export import checkpoint_to_hf, hf_to_checkpoint

    f = flags.FLAGS
    try:
        if f.to == "hf":
            checkpoint_to_hf(f.checkpoint, f.out, dtype=f.dtype, tokenizer=f.tokenizer)
        else:
            hf_to_checkpoint(f.checkpoint, f.out, dtype=f.dtype)
    except (FileNotFoundError, ValueError) as e:  # CheckpointError and ContractError are ValueErrors
        print(f"export: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"export: wrote {f.out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
