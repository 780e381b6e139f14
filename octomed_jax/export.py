"""Convert between our model checkpoints and Hugging Face folders.

  python -m octomed_jax.export --to=hf --checkpoint=CKPT --out=HF_DIR [--dtype=bfloat16]
      our checkpoint (a `save_model` folder, or a training workdir: its latest step) -> an HF folder
      that `Qwen2_5_VLForConditionalGeneration.from_pretrained` loads, with the tokenizer, our chat
      template and the image processor config beside it;
  python -m octomed_jax.export --to=ours --checkpoint=HF_DIR --out=CKPT
      an HF Qwen2.5-VL folder (legacy or model.language_model.* layout) -> our checkpoint.

Errors (a bad path, another architecture, a missing or wrongly shaped tensor) print one line naming
the file or tensor and exit with status 1.
"""

from __future__ import annotations

import sys
from typing import Any

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("to", None, ["hf", "ours"], "Direction: 'hf' (ours -> Hugging Face) or 'ours' (HF -> ours).")
flags.DEFINE_string("checkpoint", None, "Input: our checkpoint folder (--to=hf) or an HF folder (--to=ours).")
flags.DEFINE_string("out", None, "Output folder.")
flags.DEFINE_string("dtype", None, "Tensor dtype of the output (default: as stored).")
flags.DEFINE_string("tokenizer", None, "Tokenizer folder to ship with an HF export (default: the packaged Qwen one).")
flags.mark_flags_as_required(["to", "checkpoint", "out"])


def export_for_serving(model: Any, out: str, *, dtype: str | None = None, tokenizer: str | None = None) -> None:
    """Writes `model` as an HF folder with the tokenizer, our chat template and the processor config."""
    from octomed_jax.hf import save_hf

    save_hf(model, out, dtype=dtype, **_serving_files(tokenizer))


def to_hf(checkpoint: str, out: str, dtype: str | None, tokenizer: str | None) -> None:
    from octomed_jax import checkpoint as ckpt_lib

    export_for_serving(ckpt_lib.load_model(checkpoint), out, dtype=dtype, tokenizer=tokenizer)


def _serving_files(tokenizer: str | None) -> dict:
    """Tokenizer folder, chat template and processor config shipped beside an HF export."""
    from octomed_jax.data import template
    from octomed_jax.data import tokenizer as tok_lib

    return {
        "tokenizer_dir": tokenizer or tok_lib.default_tokenizer_dir(),
        "chat_template": template.CHAT_TEMPLATE,
        "processor_config": _processor_config(),
    }


def _processor_config() -> dict:
    """preprocessor_config.json for transformers' Qwen2-VL image processor, matching ours."""
    from octomed_jax.data import images

    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "image_mean": list(images.OPENAI_CLIP_MEAN),
        "image_std": list(images.OPENAI_CLIP_STD),
        "min_pixels": images.MIN_PIXELS,
        "max_pixels": images.OCTOMED_MAX_PIXELS,
        "patch_size": images.PATCH_SIZE,
        "temporal_patch_size": images.TEMPORAL_PATCH_SIZE,
        "merge_size": images.MERGE_SIZE,
    }


def to_ours(checkpoint: str, out: str, dtype: str | None) -> None:
    from octomed_jax import checkpoint as ckpt_lib
    from octomed_jax.hf import load_hf

    model = load_hf(checkpoint, **({"dtype": dtype} if dtype else {}))
    ckpt_lib.save_model(model, out)


def main(argv: list[str]) -> None:
    del argv
    from octomed_jax.hf import CheckpointError

    try:
        if FLAGS.to == "hf":
            to_hf(FLAGS.checkpoint, FLAGS.out, FLAGS.dtype, FLAGS.tokenizer)
        else:
            to_ours(FLAGS.checkpoint, FLAGS.out, FLAGS.dtype)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"export: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"export: wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
