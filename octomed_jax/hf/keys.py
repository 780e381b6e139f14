"""The correspondence between our parameter tree and Hugging Face tensor names.

Each of our parameters maps to one HF tensor (or one per layer for stacked layers), with a
transform: `copy`, `linear` (our kernels are [in, out], torch's weights [out, in]) or `conv` (the
patch embedding's Conv3d weight flattened into a matmul kernel). Names are written in the legacy
layout that Hub checkpoints use (`model.layers.N.*`, `visual.*`, `lm_head.*`); the
`model.language_model.*` / `model.visual.*` layout of transformers 5.x in memory is read too, and is the
layout Qwen3-VL checkpoints are written in (`to_family_layout`). Qwen3-VL's extra modules (q/k norms, the
position table, LayerNorm biases, the DeepStack mergers `deepstack_merger_list.N`) map by the same rules.
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


def to_legacy(name: str) -> str:
    """`model.language_model.X` -> `model.X`, `model.visual.X` -> `visual.X` (legacy layout)."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    if name.startswith("model.visual."):
        return name[len("model.") :]
    return name


def to_family_layout(name: str, family: str) -> str:
    """A legacy name in the layout `family`'s checkpoints are written in (Qwen3-VL: `model.language_model.*`)."""
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
