"""The correspondence between our parameter tree and Hugging Face tensor names.

Each of our parameters maps to one HF tensor (or one per layer for stacked layers), with a
transform: `copy`, `linear` (our kernels are [in, out], torch's weights [out, in]) or `conv` (the
patch embedding's Conv3d weight flattened into a matmul kernel). Names are written in the legacy
layout that Hub checkpoints use (`model.layers.N.*`, `visual.*`, `lm_head.*`); the
`model.language_model.*` / `model.visual.*` layout of transformers 5.x in memory is read too, and is the
layout Qwen3-VL checkpoints are written in (`to_family_layout`). Qwen3-VL's extra modules (q/k norms, the
position table, LayerNorm biases, the DeepStack mergers `deepstack_merger_list.N`) map by the same rules.
InternVL's `vision_tower.*` and `multi_modal_projector.*` carry transformers' own module names; its checkpoints
are written in the llava layout transformers saves (`language_model.model.*`, `language_model.lm_head.*`) and
read in that one or the in-memory one (`model.language_model.*`, `model.vision_tower.*`, ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import numpy as np

Kind = Literal["copy", "linear", "conv"]

# Our module names that differ from transformers' (within vision blocks and the merger).
_RENAMES = {"qkv": "attn.qkv", "proj": "attn.proj", "mlp_in": "mlp.0", "mlp_out": "mlp.2"}
_LEAVES = {"kernel": "weight", "bias": "bias", "scale": "weight", "embedding": "weight"}
_INTERNVL_TOWERS = ("vision_tower", "multi_modal_projector")
# File-name prefixes -> ours (`to_legacy`): transformers 5.x in memory, then InternVL's llava layout on disk.
_LEGACY_PREFIXES = (("model.language_model.", "model."), ("model.visual.", "visual."),
                    ("model.vision_tower.", "vision_tower."),
                    ("model.multi_modal_projector.", "multi_modal_projector."),
                    ("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."))


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One of our parameters and the HF tensor(s) it corresponds to.

    Attributes:
      path: the parameter's path in our state (e.g. ("language_model", "layers", "mlp", ...)).
      hf_template: legacy HF name; stacked parameters contain "{i}" for the layer index.
      num_layers: the stacked-layer count, or None for unstacked parameters.
      kind: how to transform between the two layouts.
    """

    path: tuple[str, ...]
    hf_template: str
    num_layers: int | None
    kind: Kind

    def hf_names(self) -> list[str]:
        if self.num_layers is None:
            return [self.hf_template]
        return [self.hf_template.format(i=i) for i in range(self.num_layers)]


def tensor_map(path: tuple[str, ...], shape: tuple[int, ...]) -> TensorMap:
    """The HF correspondence of the parameter at `path` (whose full, stacked shape is `shape`)."""
    tower, *rest = path
    leaf = rest[-1]
    num_layers = None
    if tower in _INTERNVL_TOWERS:
        return _internvl_map(path, shape)
    if tower == "language_model":
        prefix = "model"
        if rest[0] == "lm_head":
            prefix = ""
        elif rest[0] == "layers":
            prefix, rest, num_layers = "model.layers.{i}", rest[1:], shape[0]
    elif tower == "visual":
        prefix = "visual"
        if rest[0] == "blocks":
            prefix, rest, num_layers = "visual.blocks.{i}", rest[1:], shape[0]
        elif rest[0] == "patch_embed":  # Qwen3-VL's has a bias
            if leaf == "bias":
                return TensorMap(tuple(path), "visual.patch_embed.proj.bias", None, "copy")
            return TensorMap(tuple(path), "visual.patch_embed.proj.weight", None, "conv")
    else:
        raise ValueError(f"parameter {'.'.join(path)} has no Hugging Face counterpart")
    modules = [_RENAMES.get(m, m) for m in rest[:-1]]
    name = ".".join(p for p in [prefix, *modules, _LEAVES[leaf]] if p)
    return TensorMap(tuple(path), name, num_layers, "linear" if leaf == "kernel" else "copy")


def _internvl_map(path: tuple[str, ...], shape: tuple[int, ...]) -> TensorMap:
    """InternVL's vision tower and projector: transformers' names, but for our stacked `vision_tower.layers`
    (its `encoder.layer.N`) and the patch embedding matmul (its Conv2d `patch_embeddings.projection`)."""
    *modules, leaf = path
    num_layers = None
    if modules[:2] == ["vision_tower", "layers"]:
        modules, num_layers = ["vision_tower", "encoder", "layer", "{i}", *modules[2:]], shape[0]
    if modules[-1] == "patch_embeddings":
        modules.append("projection")
    kind: Kind = "copy"
    if leaf == "kernel":
        kind = "conv" if modules[-1] == "projection" else "linear"
    return TensorMap(tuple(path), ".".join([*modules, _LEAVES.get(leaf, leaf)]), num_layers, kind)


def to_legacy(name: str) -> str:
    """A file's tensor name in our legacy naming: `model.language_model.X` -> `model.X`, `model.visual.X` ->
    `visual.X`; InternVL's `model.vision_tower.X` -> `vision_tower.X` and its llava layout's
    `language_model.model.X` -> `model.X`, `language_model.lm_head.X` -> `lm_head.X`."""
    for prefix, ours in _LEGACY_PREFIXES:
        if name.startswith(prefix):
            return ours + name[len(prefix) :]
    return name


def to_family_layout(name: str, family: str) -> str:
    """A legacy name in the layout `family`'s checkpoints are written in (Qwen3-VL: `model.language_model.*`;
    InternVL: the llava layout transformers saves, `language_model.model.*`)."""
    if family == "internvl":
        return "language_model." + name if name.startswith(("model.", "lm_head.")) else name
    if family != "qwen3_vl":
        return name
    if name.startswith("model."):
        return "model.language_model." + name[len("model.") :]
    if name.startswith("visual."):
        return "model." + name
    return name


def read_part(kind: Kind, read_hf: Callable[[tuple[slice, ...]], np.ndarray], index: tuple[slice, ...]) -> np.ndarray:
    """`ours[index]` in our layout, reading only the part of the HF tensor that holds it.

    Args:
      kind: how the two layouts differ.
      read_hf: reads a part of the HF tensor, given one slice per leading HF axis.
      index: one slice per axis of our (unstacked) parameter.
    """
    if kind == "linear":
        return read_hf(index[::-1]).T
    if kind == "conv":  # our rows flatten an output channel's whole patch: read whole patches, then pick rows
        rows, channels = index
        patches = read_hf((channels,))
        return patches.reshape(patches.shape[0], -1).T[rows]
    return read_hf(index)


def to_hf(kind: Kind, array: np.ndarray, hf_shape: tuple[int, ...]) -> np.ndarray:
    """Our layer's array in the HF layout of shape `hf_shape`."""
    if kind == "linear":
        return array.T
    if kind == "conv":
        return array.T.reshape(hf_shape)
    return array


def hf_shape(kind: Kind, shape: tuple[int, ...], patch_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The HF shape of one (unstacked) parameter of ours with `shape`."""
    if kind == "linear":
        return tuple(reversed(shape))
    if kind == "conv":
        return (shape[1], *patch_shape)
    return tuple(shape)
