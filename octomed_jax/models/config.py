"""Typed configuration of the student (one of `FAMILIES`), its size presets, and the config.json translation.

The presets copy the public config.json of each Qwen2.5-VL, Qwen3-VL and InternVL3.5 release; `from_hf_dict`
reads both the flat legacy layout of the Hub checkpoints and the nested `text_config` layout of transformers 5.x,
picking the family from `model_type` (InternVL's translation: `internvl_config`), and `to_hf_dict` writes a
config.json that transformers loads without warnings.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from octomed_jax.data.tokenizer import INTERNVL_IMAGE_TOKENS, INTERNVL_SPECIAL_IDS, QWEN_SPECIAL_IDS, SpecialIds

IMAGE_TOKEN_ID = QWEN_SPECIAL_IDS.image_pad
VIDEO_TOKEN_ID = QWEN_SPECIAL_IDS.video_pad
VISION_START_TOKEN_ID = QWEN_SPECIAL_IDS.vision_start
VISION_END_TOKEN_ID = QWEN_SPECIAL_IDS.vision_end
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash", "pallas_gpu")


@dataclasses.dataclass(frozen=True)
class FamilyTraits:
    """What sets a model family apart outside its model code: every caller asks here, not `family == ...`.

    Attributes:
      tiled: images are fixed-size square tiles (`vision.image_size`, InternVL's dynamic tiling plus a
        thumbnail), carried and padded in whole tiles; else a patch grid per image (smart resize).
      positions: "mrope" (3-D M-RoPE from the image grids: `positions.rope_index`) or "1d" (one position
        per token: `internvl.positions_1d`).
      special_ids: the default tokenizer's special ids (InternVL's adds <img>, </img>, <IMG_CONTEXT>).
      image_tokens: the named tokens the family's tokenizer has beyond Qwen's, as (name, token) pairs
        (`load_tokenizer(image_tokens=...)` adds them when a folder lacks them); None for Qwen's.
      processor_class: the transformers processor written to `preprocessor_config.json`.
      chat_template: the base checkpoint's chat template (`data.template.TEMPLATES`): "qwen2_5_vl" (a default
        system turn), "qwen3_vl" (none; a system message only first) or "internvl" (none; `<IMG_CONTEXT>` images).
    """

    tiled: bool
    positions: str
    special_ids: SpecialIds
    image_tokens: tuple[tuple[str, str], ...] | None
    processor_class: str
    chat_template: str


FAMILY_TRAITS: dict[str, FamilyTraits] = {
    "qwen2_5_vl": FamilyTraits(tiled=False, positions="mrope", special_ids=QWEN_SPECIAL_IDS, image_tokens=None,
                               processor_class="Qwen2_5_VLProcessor", chat_template="qwen2_5_vl"),
    "qwen3_vl": FamilyTraits(tiled=False, positions="mrope", special_ids=QWEN_SPECIAL_IDS, image_tokens=None,
                             processor_class="Qwen3VLProcessor", chat_template="qwen3_vl"),
    "internvl": FamilyTraits(tiled=True, positions="1d", special_ids=INTERNVL_SPECIAL_IDS,
                             image_tokens=tuple(INTERNVL_IMAGE_TOKENS.items()), processor_class="InternVLProcessor",
                             chat_template="internvl"),
}
# Model families: the value of `model.family` and of config.json's `model_type`.
FAMILIES = tuple(FAMILY_TRAITS)


def family_traits(family: str) -> FamilyTraits:
    """The traits of `family` (`FAMILIES`).

    Raises:
      ValueError: an unknown family.
    """
    if family not in FAMILY_TRAITS:
        raise ValueError(f"model.family {family!r}: use one of {FAMILIES}")
    return FAMILY_TRAITS[family]


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
    # Qwen3-VL only: side**2 learned position embeddings (interpolated to each grid), and the blocks whose
    # output feeds a DeepStack merger (its features are added to the first language layers).
    num_position_embeddings: int = 0
    deepstack_visual_indexes: tuple[int, ...] = ()
    # InternVL only (InternViT; `rms_norm_eps` is its layer_norm_eps, for either norm type): the tile side in
    # pixels (the position table has (image_size / patch_size)**2 + 1 entries), q/k RMSNorm, "layer_norm" or
    # "rms_norm", biases on q/k/v. Its pixel shuffle merges spatial_merge_size**2 patches (downsample_ratio 0.5).
    image_size: int = 0
    use_qk_norm: bool = False
    norm_type: str = "layer_norm"
    attention_bias: bool = True

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
    def num_tile_patches(self) -> int:
        """InternViT: patches of one tile (its [CLS] token not counted)."""
        return (self.image_size // self.patch_size) ** 2

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
    attention_head_dim: int = 0  # 0: hidden_size // num_attention_heads (Qwen3-VL sets it: 128)

    @property
    def head_dim(self) -> int:
        return self.attention_head_dim or self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The whole student: vision tower, language model, and how they are computed.

    Attributes:
      family: the model family (`FAMILIES`): `qwen2_5_vl`, `qwen3_vl` (`octomed_jax.models.qwen3_vl`) or
        `internvl` (`octomed_jax.models.internvl`).
      param_dtype: dtype the parameters are stored in (fp32 master weights for training).
      dtype: compute dtype of matmuls and activations (bf16 for speed, fp32 for parity).
      scan_layers: run the stacked layers with `nnx.scan` (one compiled layer) instead of unrolled.
      remat_policy: name of a `jax.checkpoint_policies` policy, "full" (save nothing but the layer
        input) or "none" (no rematerialisation).
      attention_impl: the attention kernel (`octomed_jax.models.attention`): "xla" (any backend; materialises
        the scores), "cudnn" (`jax.nn.dot_product_attention`'s cuDNN path on GPU, bf16; the packed mask goes in
        as a bias), "splash" (Pallas splash attention, TPU), "pallas_gpu" (Pallas Triton flash attention with
        segment ids, GPU) or "auto" (splash on TPU, pallas_gpu on GPU, xla elsewhere).
      attention_block_q, attention_block_kv: query / key tile sizes of the splash kernel (forward and
        backward); capped at the sequence length. Tiles that do not fit the core's memory fail at compile
        time. pallas_gpu takes the smaller of the two, capped at 128 (`attention._GPU_TILE`).
    """

    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    image_token_id: int = IMAGE_TOKEN_ID
    video_token_id: int = VIDEO_TOKEN_ID
    vision_start_token_id: int = VISION_START_TOKEN_ID
    vision_end_token_id: int = VISION_END_TOKEN_ID
    family: str = "qwen2_5_vl"
    param_dtype: str = "float32"
    dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    attention_impl: str = "xla"
    attention_block_q: int = 512
    attention_block_kv: int = 512

    def __post_init__(self):
        t, v = self.text, self.vision
        if self.family not in FAMILIES:
            raise ValueError(f"model.family {self.family!r}: use one of {FAMILIES}")
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
        if self.family == "qwen3_vl":
            side = int(round(v.num_position_embeddings**0.5))
            if v.num_position_embeddings <= 0 or side * side != v.num_position_embeddings:
                raise ValueError(f"vision num_position_embeddings {v.num_position_embeddings}: need a square > 0")
            bad = [i for i in v.deepstack_visual_indexes if not 0 <= i < v.depth]
            if bad or len(v.deepstack_visual_indexes) > t.num_hidden_layers:
                raise ValueError(f"deepstack_visual_indexes {v.deepstack_visual_indexes}: need at most "
                                 f"{t.num_hidden_layers} blocks within 0..{v.depth - 1}")
        if self.family == "internvl":
            side = v.image_size // v.patch_size if v.patch_size else 0
            if side <= 0 or v.image_size % v.patch_size or side % v.spatial_merge_size:
                raise ValueError(f"vision image_size {v.image_size}: need a multiple of patch_size {v.patch_size} "
                                 f"whose patch grid the pixel shuffle ({v.spatial_merge_size}) divides")
            if v.norm_type not in ("layer_norm", "rms_norm") or v.hidden_size % v.num_heads:
                raise ValueError(f"vision norm_type {v.norm_type!r} (layer_norm or rms_norm), hidden_size "
                                 f"{v.hidden_size} and num_heads {v.num_heads} (must divide it)")

    @property
    def traits(self) -> FamilyTraits:
        """What sets this model's family apart outside the model code (`FamilyTraits`)."""
        return family_traits(self.family)

    @property
    def jnp_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def jnp_param_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _preset(text: dict[str, Any], vision: dict[str, Any], family: str = "qwen2_5_vl") -> ModelConfig:
    return ModelConfig(
        text=TextConfig(**text), vision=VisionConfig(**{"out_hidden_size": text["hidden_size"], **vision}),
        family=family,
    )


# What every Qwen3-VL release shares (public config.json): 128-wide heads, interleaved M-RoPE sections
# (24, 20, 20), theta 5e6, 256K positions; a 16-pixel-patch ViT with a 48 x 48 learned position table.
_QWEN3_TEXT = dict(vocab_size=151936, attention_head_dim=128, mrope_section=(24, 20, 20), rope_theta=5_000_000.0,
                   max_position_embeddings=262144)
_QWEN3_VISION = dict(patch_size=16, num_position_embeddings=2304, fullatt_block_indexes=(), num_heads=16)
_QWEN3_VISION_SMALL = dict(_QWEN3_VISION, depth=24, hidden_size=1024, intermediate_size=4096,
                           deepstack_visual_indexes=(5, 11, 17))
_QWEN3_VISION_LARGE = dict(_QWEN3_VISION, depth=27, hidden_size=1152, intermediate_size=4304,
                           deepstack_visual_indexes=(8, 16, 24))


# The language model sizes of the Qwen3 releases (public config.json of Qwen/Qwen3-{0.6B,...,32B}), which Qwen3-VL
# and InternVL3.5 build on; the three smallest tie their embeddings.
_QWEN3_LM = {
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, tie_word_embeddings=True),
    "1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, tie_word_embeddings=True),
    "4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8),
    "14b": dict(hidden_size=5120, intermediate_size=17408, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=8),
    "32b": dict(hidden_size=5120, intermediate_size=25600, num_hidden_layers=64, num_attention_heads=64,
                num_key_value_heads=8),
}


def _qwen3_preset(text: dict[str, Any], vision: dict[str, Any]) -> ModelConfig:
    return _preset({**_QWEN3_TEXT, **text}, vision, family="qwen3_vl")


# InternVL3.5 ("-HF" checkpoints, `model_type` internvl): InternViT + pixel shuffle + MLP projector + a Qwen3
# language model (128-wide heads, q/k norms, 1-D RoPE theta 1e6 = M-RoPE with one section, 40,960 positions).
# The two towers' fields are those of OpenGVLab's own -HF converter (InternViT-300M for 1B..14B, InternViT-6B,
# 45 layers, for 38B) and the image token is its <IMG_CONTEXT> (151671, its default; InternVL's config.json has
# no <img> / </img> ids, so vision_start/end_token_id keep Qwen's and the model does not read them). The text
# sizes are those of Qwen3-{0.6B,1.7B,4B,8B,14B,32B}, tied embeddings in 1B/2B/4B as in those Qwen3 releases.
# Not verifiable from transformers' docs or tests: the exact -HF file of each size (the 8B's language model
# fields were checked against InternVL3_5-8B's public config.json, whose llm_config the converter copies).
_INTERNVL_TEXT = dict(vocab_size=151936, attention_head_dim=128, mrope_section=(64, 0, 0), rope_theta=1_000_000.0,
                      max_position_embeddings=40960)
_INTERNVL_VISION = dict(patch_size=14, temporal_patch_size=1, image_size=448, fullatt_block_indexes=())
_INTERNVIT_300M = dict(_INTERNVL_VISION, depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16)
_INTERNVIT_6B = dict(_INTERNVL_VISION, depth=45, hidden_size=3200, intermediate_size=12800, num_heads=25,
                     norm_type="rms_norm", use_qk_norm=True, attention_bias=False)


def _internvl_preset(text: dict[str, Any], vision: dict[str, Any]) -> ModelConfig:
    return _preset({**_INTERNVL_TEXT, **text}, vision, family="internvl").replace(image_token_id=151671)


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
    # The demo student (`configs/demo.py`): Qwen2.5-VL-shaped, small enough to train on a CPU, with the demo's
    # compact tokenizer (`octomed_demo.vocabulary`: at most 1,024 tokens, its own special ids).
    "demo": _preset(
        dict(vocab_size=1024, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
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
    # Public config.json of Qwen/Qwen3-VL-{2B,4B,8B,32B}-Instruct.
    "qwen3_vl_2b": _qwen3_preset(_QWEN3_LM["1.7b"], _QWEN3_VISION_SMALL),
    "qwen3_vl_4b": _qwen3_preset(_QWEN3_LM["4b"], _QWEN3_VISION_SMALL),
    "qwen3_vl_8b": _qwen3_preset(_QWEN3_LM["8b"], _QWEN3_VISION_LARGE),
    "qwen3_vl_32b": _qwen3_preset(_QWEN3_LM["32b"], _QWEN3_VISION_LARGE),
    # Tiny Qwen3-VL for tests: head_dim (16) != hidden / heads (64 / 8), a 6 x 6 position table (so grids
    # larger and smaller than it interpolate), DeepStack from two of three blocks into two of three layers.
    "qwen3_vl_tiny": _qwen3_preset(
        dict(vocab_size=152000, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=8,
             num_key_value_heads=2, attention_head_dim=16, mrope_section=(2, 3, 3), rope_theta=10000.0),
        dict(patch_size=16, num_position_embeddings=36, fullatt_block_indexes=(), depth=3, hidden_size=32,
             intermediate_size=64, num_heads=2, deepstack_visual_indexes=(0, 2)),
    ),
    "internvl3_5_1b": _internvl_preset(_QWEN3_LM["0.6b"], _INTERNVIT_300M),
    "internvl3_5_2b": _internvl_preset(_QWEN3_LM["1.7b"], _INTERNVIT_300M),
    "internvl3_5_4b": _internvl_preset(_QWEN3_LM["4b"], _INTERNVIT_300M),
    "internvl3_5_8b": _internvl_preset(_QWEN3_LM["8b"], _INTERNVIT_300M),
    "internvl3_5_14b": _internvl_preset(_QWEN3_LM["14b"], _INTERNVIT_300M),
    "internvl3_5_38b": _internvl_preset(_QWEN3_LM["32b"], _INTERNVIT_6B),
    # Tiny InternVL for tests: 84-pixel tiles (6 x 6 patches -> 3 x 3 = 9 tokens after the pixel shuffle),
    # head_dim (16) != hidden / heads (64 / 8), untied head (as the 8B), synthetic ids under 152000.
    "internvl_tiny": _internvl_preset(
        dict(vocab_size=152000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
             num_key_value_heads=2, attention_head_dim=16, mrope_section=(8, 0, 0)),
        dict(_INTERNVL_VISION, image_size=84, depth=2, hidden_size=32, intermediate_size=64, num_heads=2),
    ),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """A preset by name (`PRESETS`: "3b" ... "72b", "qwen3_vl_8b", "tiny", ...), with ModelConfig fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)


def from_hf_dict(d: dict[str, Any], **overrides: Any) -> ModelConfig:
    """Builds a ModelConfig from a Qwen2.5-VL, Qwen3-VL (flat legacy or nested layout) or InternVL config.json.

    The family is config.json's `model_type`.
    """
    family = d.get("model_type")
    if family not in FAMILIES:
        raise ValueError(f"config.json has model_type {family!r}; this loader reads {FAMILIES}")
    if family == "internvl":
        from octomed_jax.models import internvl_config  # lazy: it builds on this module's classes

        return internvl_config.from_hf_dict(d, **overrides)
    qwen3 = family == "qwen3_vl"
    t = dict(d.get("text_config") or {})
    for key, value in d.items():  # legacy checkpoints keep the text fields at top level
        if key not in ("text_config", "vision_config"):
            t.setdefault(key, value)
    rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
    if qwen3 and not rope.get("mrope_interleaved", True):
        raise ValueError("text_config: mrope_interleaved=false is not Qwen3-VL's M-RoPE layout")
    text = TextConfig(
        vocab_size=t["vocab_size"],
        hidden_size=t["hidden_size"],
        intermediate_size=t["intermediate_size"],
        num_hidden_layers=t["num_hidden_layers"],
        num_attention_heads=t["num_attention_heads"],
        num_key_value_heads=t.get("num_key_value_heads") or t["num_attention_heads"],
        rms_norm_eps=t.get("rms_norm_eps", 1e-6),
        rope_theta=rope.get("rope_theta", t.get("rope_theta", 5_000_000.0 if qwen3 else 1_000_000.0)),
        mrope_section=tuple(rope.get("mrope_section", (24, 20, 20) if qwen3 else (16, 24, 24))),
        max_position_embeddings=t.get("max_position_embeddings", 128000),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", t.get("tie_word_embeddings", False))),
        attention_head_dim=t.get("head_dim", 128) if qwen3 else 0,
    )
    v = d.get("vision_config") or {}
    vrope = v.get("rope_parameters") or {}
    defaults = {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "patch_size": 16} if qwen3 else {
        "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "patch_size": 14}
    vision = VisionConfig(
        depth=v.get("depth", defaults["depth"]),
        hidden_size=v.get("hidden_size", defaults["hidden_size"]),
        intermediate_size=v.get("intermediate_size", defaults["intermediate_size"]),
        num_heads=v.get("num_heads", 16),
        in_channels=v.get("in_channels", v.get("in_chans", 3)),
        patch_size=v.get("patch_size", v.get("spatial_patch_size", defaults["patch_size"])),
        temporal_patch_size=v.get("temporal_patch_size", 2),
        spatial_merge_size=v.get("spatial_merge_size", 2),
        window_size=v.get("window_size", 112),
        out_hidden_size=v.get("out_hidden_size", text.hidden_size),
        fullatt_block_indexes=() if qwen3 else tuple(v.get("fullatt_block_indexes", (7, 15, 23, 31))),
        tokens_per_second=v.get("tokens_per_second", 2),
        rope_theta=vrope.get("rope_theta", 10000.0),
        num_position_embeddings=v.get("num_position_embeddings", 2304) if qwen3 else 0,
        deepstack_visual_indexes=tuple(v.get("deepstack_visual_indexes", (8, 16, 24))) if qwen3 else (),
    )
    vision_act = "gelu_pytorch_tanh" if qwen3 else "silu"
    if v.get("hidden_act", vision_act) != vision_act or t.get("hidden_act", "silu") != "silu":
        raise ValueError(f"only hidden_act='silu' (text) and {vision_act!r} (vision) are supported for {family}")
    return ModelConfig(
        text=text,
        vision=vision,
        image_token_id=d.get("image_token_id", IMAGE_TOKEN_ID),
        video_token_id=d.get("video_token_id", VIDEO_TOKEN_ID),
        vision_start_token_id=d.get("vision_start_token_id", VISION_START_TOKEN_ID),
        vision_end_token_id=d.get("vision_end_token_id", VISION_END_TOKEN_ID),
        family=family,
        **overrides,
    )


def to_hf_dict(
    cfg: ModelConfig, *, torch_dtype: str = "float32", special_ids: SpecialIds = QWEN_SPECIAL_IDS
) -> dict[str, Any]:
    """A config.json for transformers' `Qwen2_5_VLForConditionalGeneration`, `Qwen3VLForConditionalGeneration` or
    `InternVLForConditionalGeneration`.

    `special_ids` are the run's tokenizer's (bos and eos); the image ids are the model's own.
    """
    if cfg.family == "internvl":
        from octomed_jax.models import internvl_config

        return internvl_config.to_hf_dict(cfg, torch_dtype=torch_dtype, special_ids=special_ids)
    t, v = cfg.text, cfg.vision
    qwen3 = cfg.family == "qwen3_vl"
    rope = {"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": list(t.mrope_section)}
    text_config = {
        "model_type": f"{cfg.family}_text",
        "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads,
        "num_key_value_heads": t.num_key_value_heads,
        "hidden_act": "silu",
        "rms_norm_eps": t.rms_norm_eps,
        "max_position_embeddings": t.max_position_embeddings,
        "rope_parameters": {**rope, "mrope_interleaved": True} if qwen3 else rope,
        "tie_word_embeddings": t.tie_word_embeddings,
        "bos_token_id": special_ids.endoftext,
        "eos_token_id": special_ids.im_end,
        "dtype": torch_dtype,
    }
    vision_config = {
        "model_type": f"{cfg.family}_vision",
        "depth": v.depth,
        "hidden_size": v.hidden_size,
        "intermediate_size": v.intermediate_size,
        "num_heads": v.num_heads,
        "in_channels": v.in_channels,
        "patch_size": v.patch_size,
        "temporal_patch_size": v.temporal_patch_size,
        "spatial_merge_size": v.spatial_merge_size,
        "out_hidden_size": v.out_hidden_size,
        "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
    }
    if qwen3:
        text_config |= {"head_dim": t.head_dim, "attention_bias": False}
        vision_config |= {"hidden_act": "gelu_pytorch_tanh", "num_position_embeddings": v.num_position_embeddings,
                          "deepstack_visual_indexes": list(v.deepstack_visual_indexes)}
    else:
        vision_config |= {"hidden_act": "silu", "window_size": v.window_size,
                          "fullatt_block_indexes": list(v.fullatt_block_indexes),
                          "tokens_per_second": v.tokens_per_second}
    return {
        "architectures": ["Qwen3VLForConditionalGeneration" if qwen3 else "Qwen2_5_VLForConditionalGeneration"],
        "model_type": cfg.family,
        "text_config": text_config,
        "vision_config": vision_config,
        "image_token_id": cfg.image_token_id,
        "video_token_id": cfg.video_token_id,
        "vision_start_token_id": cfg.vision_start_token_id,
        "vision_end_token_id": cfg.vision_end_token_id,
        "tie_word_embeddings": t.tie_word_embeddings,
        "dtype": torch_dtype,
    }
