"""Data for the student: image preprocessing, the Qwen tokenizer, the one chat template, and the Grain
input pipeline (examples, packing, per-host batches, global batches, iterator checkpoints).

Importing the package loads NumPy/PIL/tokenizers only, so that data workers stay light; the pipeline
(Grain), global batches (JAX/Flax) and checkpointing (Orbax) are imported on first use of their names.
"""

import importlib
from typing import Any

from octomed_jax.data.config import DataConfig, ErrorBudget
from octomed_jax.data.examples import Example, ExampleDecoder, Skipped, make_example, truncate_reasoning
from octomed_jax.data.images import (
    MAX_PIXELS,
    MIN_PIXELS,
    OCTOMED_MAX_PIXELS,
    ImageError,
    image_grid_thw,
    load_image,
    num_image_tokens,
    preprocess_image,
    smart_resize,
)
from octomed_jax.data.packing import PackingStats, RowPacker, pack_rows
from octomed_jax.data.template import (
    CHAT_TEMPLATE,
    DEFAULT_SYSTEM_PROMPT,
    EncodedChat,
    TemplateError,
    encode_chat,
    export_chat_template,
    messages_for_question,
    messages_for_trace,
    render_chat,
)
from octomed_jax.data.tokenizer import (
    ENDOFTEXT_ID,
    IM_END_ID,
    IM_START_ID,
    IMAGE_PAD_ID,
    THINK_END_ID,
    THINK_START_ID,
    VIDEO_PAD_ID,
    VISION_END_ID,
    VISION_START_ID,
    TokenizerError,
    check_special_ids,
    load_tokenizer,
    save_tokenizer,
)

# Heavy names, imported on first use: name -> module.
_LAZY = {
    "DataErrorBudgetExceeded": "octomed_jax.data.pipeline",
    "PackedBatchIterator": "octomed_jax.data.pipeline",
    "host_examples": "octomed_jax.data.pipeline",
    "make_iterator": "octomed_jax.data.pipeline",
    "built_sources": "octomed_jax.data.pipeline",
    "TrainBatch": "octomed_jax.data.global_batch",
    "abstract_train_batch": "octomed_jax.data.global_batch",
    "to_global_batch": "octomed_jax.data.global_batch",
    "to_local_batch": "octomed_jax.data.global_batch",
    "train_batch_shardings": "octomed_jax.data.global_batch",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DataConfig",
    "DataErrorBudgetExceeded",
    "ErrorBudget",
    "Example",
    "ExampleDecoder",
    "PackedBatchIterator",
    "PackingStats",
    "RowPacker",
    "Skipped",
    "TrainBatch",
    "abstract_train_batch",
    "host_examples",
    "make_example",
    "make_iterator",
    "built_sources",
    "pack_rows",
    "to_global_batch",
    "to_local_batch",
    "train_batch_shardings",
    "truncate_reasoning",
    "CHAT_TEMPLATE",
    "DEFAULT_SYSTEM_PROMPT",
    "ENDOFTEXT_ID",
    "IMAGE_PAD_ID",
    "IM_END_ID",
    "IM_START_ID",
    "MAX_PIXELS",
    "MIN_PIXELS",
    "OCTOMED_MAX_PIXELS",
    "THINK_END_ID",
    "THINK_START_ID",
    "VIDEO_PAD_ID",
    "VISION_END_ID",
    "VISION_START_ID",
    "EncodedChat",
    "ImageError",
    "TemplateError",
    "TokenizerError",
    "check_special_ids",
    "encode_chat",
    "export_chat_template",
    "image_grid_thw",
    "load_image",
    "load_tokenizer",
    "messages_for_question",
    "messages_for_trace",
    "num_image_tokens",
    "preprocess_image",
    "render_chat",
    "save_tokenizer",
    "smart_resize",
]
