"""The model class of each family (`ModelConfig.family`): one place that picks it, for every caller that
builds a model from a config (HF interop, training, checkpoints)."""

from __future__ import annotations

from collections.abc import Iterable

from flax import nnx

from octomed_jax.models import internvl, qwen2_5_vl, qwen3_vl
from octomed_jax.models.config import ModelConfig
from octomed_jax.models.internvl import InternVL
from octomed_jax.models.qwen2_5_vl import Qwen25VL
from octomed_jax.models.qwen3_vl import Qwen3VL

# Qwen3VL and InternVL subclass Qwen25VL: every family answers its interface (`forward`, `hidden_states`, ...).
MODEL_CLASSES: dict[str, type[Qwen25VL]] = {"qwen2_5_vl": Qwen25VL, "qwen3_vl": Qwen3VL, "internvl": InternVL}


# Each family's vision inputs: its fields are the vision keys of a packed batch (`positions.row_layout`); the
# optional ones only where the data path makes them.
OPTIONAL_VISION_FIELDS = {"image_bins"}
VISION_INPUT_CLASSES: dict[str, type] = {"qwen2_5_vl": qwen2_5_vl.VisionInputs, "qwen3_vl": qwen3_vl.VisionInputs,
                                         "internvl": internvl.VisionInputs}


def vision_inputs_class(fields: Iterable[str]) -> type:
    """The `VisionInputs` class whose fields are exactly `fields` (a batch's vision keys name its family).

    Raises:
      ValueError: no family has these fields.
    """
    names = set(fields)
    for cls in VISION_INPUT_CLASSES.values():
        every = set(cls.__dataclass_fields__)
        if every - OPTIONAL_VISION_FIELDS <= names <= every:
            return cls
    raise ValueError(f"vision fields {sorted(names)} match no family's VisionInputs ({sorted(VISION_INPUT_CLASSES)})")


def model_class(cfg: ModelConfig) -> type[Qwen25VL]:
    """The class of `cfg.family`."""
    return MODEL_CLASSES[cfg.family]


def init_model(cfg: ModelConfig, seed: int = 0) -> Qwen25VL:
    """A randomly initialised model of `cfg.family` on the default device (sharded: `sharding.create_model`)."""
    with nnx.use_eager_sharding(False):
        return model_class(cfg)(cfg, rngs=nnx.Rngs(seed))


def abstract_model(cfg: ModelConfig) -> Qwen25VL:
    """The structure of a `cfg.family` model with `jax.ShapeDtypeStruct` leaves: no memory allocated."""
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: model_class(cfg)(cfg, rngs=nnx.Rngs(0)))
