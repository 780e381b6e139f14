"""Typed configuration of the Qwen2.5-VL student, its size presets, and the config.json translation.

The presets copy the public config.json of each Qwen2.5-VL release; `from_hf_dict` reads both the
flat legacy layout of the Hub checkpoints and the nested `text_config` layout of transformers 5.x,
and `to_hf_dict` writes a config.json that transformers loads without warnings.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from octomed_jax.data.tokenizer import QWEN_SPECIAL_IDS

IMAGE_TOKEN_ID = QWEN_SPECIAL_IDS.image_pad
VIDEO_TOKEN_ID = QWEN_SPECIAL_IDS.video_pad
VISION_START_TOKEN_ID = QWEN_SPECIAL_IDS.vision_start
VISION_END_TOKEN_ID = QWEN_SPECIAL_IDS.vision_end
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash", "pallas_gpu")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    out_hidden_size: int = 3584
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    tokens_per_second: int = 2
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size**2

    @property
    def window_patches(self) -> int:
        """Patches of a full attention window (whole merge units within `window_size` pixels square)."""
        return (self.window_size // self.spatial_merge_size // self.patch_size * self.spatial_merge_size) ** 2


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    max_position_embeddings: int = 128000
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The whole student: vision tower, language model, and how they are computed.

    Attributes:
      param_dtype: dtype the parameters are stored in (fp32 master weights for training).
      dtype: compute dtype of matmuls and activations (bf16 for speed, fp32 for parity).
      scan_layers: run the stacked layers with `nnx.scan` (one compiled layer) instead of unrolled.
      remat_policy: name of a `jax.checkpoint_policies` policy, "full" (save nothing but the layer
        input) or "none" (no rematerialisation).
      attention_impl: the attention kernel (`octomed_jax.models.attention`): "xla" (any backend; materialises
        the scores), "cudnn" (`jax.nn.dot_product_attention`'s cuDNN path on GPU, bf16; the packed mask goes in
        as a bias), "splash" (Pallas splash attention, TPU), "pallas_gpu" (Pallas Triton flash attention with
        segment ids, GPU) or "auto" (splash on TPU, pallas_gpu on GPU, xla elsewhere).
      attention_block_q, attention_block_kv: query / key tile sizes of the splash and pallas_gpu kernels
        (forward and backward); capped at the sequence length. Tiles that do not fit the core's memory fail
        at compile time.
    """

    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    image_token_id: int = IMAGE_TOKEN_ID
    video_token_id: int = VIDEO_TOKEN_ID
    vision_start_token_id: int = VISION_START_TOKEN_ID
    vision_end_token_id: int = VISION_END_TOKEN_ID
    param_dtype: str = "float32"
    dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    attention_impl: str = "xla"
    attention_block_q: int = 512
    attention_block_kv: int = 512

    def __post_init__(self):
        t = self.text
        if sum(t.mrope_section) * 2 != t.head_dim:
            raise ValueError(f"mrope_section {t.mrope_section} must sum to head_dim/2 = {t.head_dim // 2}")
        if t.num_attention_heads % t.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.vision.out_hidden_size != t.hidden_size:
            raise ValueError(
                f"vision out_hidden_size {self.vision.out_hidden_size} != text hidden_size {t.hidden_size}"
            )
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"model.attention_impl {self.attention_impl!r}: use one of {ATTENTION_IMPLS}")
        for name in ("attention_block_q", "attention_block_kv"):
            if getattr(self, name) <= 0 or getattr(self, name) % 128:
                raise ValueError(f"model.{name}={getattr(self, name)}: use a positive multiple of 128")
        bad = [i for i in self.vision.fullatt_block_indexes if not 0 <= i < self.vision.depth]
        if bad:
            raise ValueError(f"fullatt_block_indexes {bad} outside 0..{self.vision.depth - 1}")

    @property
    def jnp_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def jnp_param_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _preset(text: dict[str, Any], vision: dict[str, Any]) -> ModelConfig:
    return ModelConfig(
        text=TextConfig(**text), vision=VisionConfig(**{"out_hidden_size": text["hidden_size"], **vision})
    )


PRESETS: dict[str, ModelConfig] = {
    # Public config.json of Qwen/Qwen2.5-VL-{3B,7B,32B,72B}-Instruct.
    "3b": _preset(
        dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
             num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True),
        dict(intermediate_size=3420),
    ),
    "7b": _preset(
        dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
             num_attention_heads=28, num_key_value_heads=4),
        dict(intermediate_size=3420),
    ),
    "32b": _preset(
        dict(vocab_size=152064, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
             num_attention_heads=40, num_key_value_heads=8),
        dict(intermediate_size=3456),
    ),
    "72b": _preset(
        dict(vocab_size=152064, hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
             num_attention_heads=64, num_key_value_heads=8),
        dict(intermediate_size=3456),
    ),
    # Tiny shapes for tests: real vocabulary ids must fit, so the vocabulary stays full size in
    # "tiny" and is cut in "tiny_vocab" where only synthetic ids are used.
    "tiny": _preset(
        dict(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, mrope_section=(2, 3, 3), tie_word_embeddings=True),
        dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, fullatt_block_indexes=(1, 3),
             window_size=56),
    ),
    # The demo student (`configs/demo.py`): Qwen2.5-VL-shaped, the full vocabulary (the real tokenizer's
    # ids), tied embeddings so the 151,936 x width table is counted once; small enough to train on a CPU.
    "demo": _preset(
        dict(vocab_size=151936, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, mrope_section=(4, 6, 6), tie_word_embeddings=True),
        dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, fullatt_block_indexes=(1,),
             window_size=56),
    ),
    "tiny_vocab": _preset(
        dict(vocab_size=152000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, mrope_section=(2, 3, 3)),
        dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, fullatt_block_indexes=(1, 3),
             window_size=56),
    ),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """A preset by name ("3b", "7b", "32b", "72b", "tiny"), with ModelConfig fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)


def from_hf_dict(d: dict[str, Any], **overrides: Any) -> ModelConfig:
    """Builds a ModelConfig from a Qwen2.5-VL config.json (flat legacy or nested layout)."""
    model_type = d.get("model_type")
    if model_type != "qwen2_5_vl":
        raise ValueError(f"config.json has model_type {model_type!r}; this loader reads 'qwen2_5_vl' only")
    t = dict(d.get("text_config") or {})
    for key, value in d.items():  # legacy checkpoints keep the text fields at top level
        if key not in ("text_config", "vision_config"):
            t.setdefault(key, value)
    rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
    mrope = tuple(rope.get("mrope_section", (16, 24, 24)))
    text = TextConfig(
        vocab_size=t["vocab_size"],
        hidden_size=t["hidden_size"],
        intermediate_size=t["intermediate_size"],
        num_hidden_layers=t["num_hidden_layers"],
        num_attention_heads=t["num_attention_heads"],
        num_key_value_heads=t.get("num_key_value_heads") or t["num_attention_heads"],
        rms_norm_eps=t.get("rms_norm_eps", 1e-6),
        rope_theta=rope.get("rope_theta", t.get("rope_theta", 1_000_000.0)),
        mrope_section=mrope,
        max_position_embeddings=t.get("max_position_embeddings", 128000),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", t.get("tie_word_embeddings", False))),
    )
    v = d.get("vision_config") or {}
    vrope = v.get("rope_parameters") or {}
    vision = VisionConfig(
        depth=v.get("depth", 32),
        hidden_size=v.get("hidden_size", 1280),
        intermediate_size=v.get("intermediate_size", 3420),
        num_heads=v.get("num_heads", 16),
        in_channels=v.get("in_channels", v.get("in_chans", 3)),
        patch_size=v.get("patch_size", v.get("spatial_patch_size", 14)),
        temporal_patch_size=v.get("temporal_patch_size", 2),
        spatial_merge_size=v.get("spatial_merge_size", 2),
        window_size=v.get("window_size", 112),
        out_hidden_size=v.get("out_hidden_size", text.hidden_size),
        fullatt_block_indexes=tuple(v.get("fullatt_block_indexes", (7, 15, 23, 31))),
        tokens_per_second=v.get("tokens_per_second", 2),
        rope_theta=vrope.get("rope_theta", 10000.0),
    )
    if v.get("hidden_act", "silu") != "silu" or t.get("hidden_act", "silu") != "silu":
        raise ValueError("only hidden_act='silu' is supported")
    return ModelConfig(
        text=text,
        vision=vision,
        image_token_id=d.get("image_token_id", IMAGE_TOKEN_ID),
        video_token_id=d.get("video_token_id", VIDEO_TOKEN_ID),
        vision_start_token_id=d.get("vision_start_token_id", VISION_START_TOKEN_ID),
        vision_end_token_id=d.get("vision_end_token_id", VISION_END_TOKEN_ID),
        **overrides,
    )


def to_hf_dict(cfg: ModelConfig, *, torch_dtype: str = "float32") -> dict[str, Any]:
    """A config.json for transformers' Qwen2_5_VLForConditionalGeneration."""
    t, v = cfg.text, cfg.vision
    text_config = {
        "model_type": "qwen2_5_vl_text",
        "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads,
        "num_key_value_heads": t.num_key_value_heads,
        "hidden_act": "silu",
        "rms_norm_eps": t.rms_norm_eps,
        "max_position_embeddings": t.max_position_embeddings,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": t.rope_theta,
            "mrope_section": list(t.mrope_section),
        },
        "tie_word_embeddings": t.tie_word_embeddings,
        "bos_token_id": QWEN_SPECIAL_IDS.endoftext,
        "eos_token_id": QWEN_SPECIAL_IDS.im_end,
        "dtype": torch_dtype,
    }
    vision_config = {
        "model_type": "qwen2_5_vl_vision",
        "depth": v.depth,
        "hidden_size": v.hidden_size,
        "intermediate_size": v.intermediate_size,
        "num_heads": v.num_heads,
        "in_channels": v.in_channels,
        "patch_size": v.patch_size,
        "temporal_patch_size": v.temporal_patch_size,
        "spatial_merge_size": v.spatial_merge_size,
        "window_size": v.window_size,
        "out_hidden_size": v.out_hidden_size,
        "fullatt_block_indexes": list(v.fullatt_block_indexes),
        "tokens_per_second": v.tokens_per_second,
        "hidden_act": "silu",
        "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
    }
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "text_config": text_config,
        "vision_config": vision_config,
        "image_token_id": cfg.image_token_id,
        "video_token_id": cfg.video_token_id,
        "vision_start_token_id": cfg.vision_start_token_id,
        "vision_end_token_id": cfg.vision_end_token_id,
        "tie_word_embeddings": t.tie_word_embeddings,
        "dtype": torch_dtype,
    }
