"""The safetensors files of a checkpoint folder, read and written with the `safetensors` package (no pickle).

Reading opens each file with `safe_open(path, framework="numpy")`, which memory-maps it, and `get_slice` copies
out only the requested part of a tensor, so a host reads the slices that land on its own devices. Writing
collects one shard at a time and hands it to `safetensors.numpy.save_file`; several shards get the index
`model.safetensors.index.json` that transformers reads. bfloat16 travels as `ml_dtypes.bfloat16` arrays, whose
bytes safetensors stores and returns unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy: without it safetensors cannot return BF16 tensors)
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# transformers refuses safetensors files whose metadata does not name the framework.
_METADATA = {"format": "pt"}

class Checkpoint:
    """All tensors of a checkpoint folder: one `model.safetensors`, or shards listed in the index."""

    def __init__(self, folder: str):
        """Opens every file (headers only) and checks that each tensor is where the index says.

        Raises:
          FileNotFoundError: no weights in `folder`, or a file the index lists is missing.
          ValueError: a file that is not safetensors, or one that lacks a tensor the index puts there.
        """
        index_path = os.path.join(folder, INDEX_FILE)
        single = os.path.join(folder, SINGLE_FILE)
        self._open: dict[str, Any] = {}
        if os.path.exists(index_path):
            try:
                with open(index_path) as f:
                    weight_map: dict[str, str] = json.load(f)["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{index_path}: not a safetensors index with a weight_map ({e!r})") from e
            self.files = {name: os.path.join(folder, fname) for name, fname in weight_map.items()}
            for path in sorted(set(self.files.values())):
                if not os.path.exists(path):
                    raise FileNotFoundError(f"{path}: listed in {INDEX_FILE} but missing")
            for name, path in self.files.items():
                if name not in self._file(path).keys():
                    raise ValueError(f"{path}: has no tensor {name}, which {INDEX_FILE} puts there")
        elif os.path.exists(single):
            self.files = {name: single for name in self._file(single).keys()}
        else:
            raise FileNotFoundError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}")

    def _file(self, path: str) -> Any:
        if path not in self._open:
            try:
                self._open[path] = safe_open(path, framework="numpy")
            except SafetensorError as e:
                raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
        return self._open[path]

    def keys(self) -> list[str]:
        return list(self.files)

    def where(self, name: str) -> str:
        """The file that holds tensor `name`."""
        return self.files[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._file(self.files[name]).get_slice(name).get_shape())

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        """Tensor `name`, or only its part `index` (one slice per leading axis), read from disk."""
        path = self.files[name]
        try:
            if index is None:
                return self._file(path).get_tensor(name)
            return self._file(path).get_slice(name)[index]
        except (SafetensorError, TypeError) as e:  # TypeError: a dtype NumPy does not know
            raise ValueError(f"{path}: cannot read tensor {name} ({e})") from e


@dataclasses.dataclass(frozen=True)
class LazyTensor:
    """A tensor to write, produced only when its shard is written (an export holds one shard at a time)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def _write_shard(tensors: list[LazyTensor], path: str) -> None:
    arrays = {}
    for t in tensors:
        # safetensors copies an array's buffer as it lies in memory: a transposed view must be made contiguous.
        array = np.ascontiguousarray(t.produce(), dtype=t.dtype)
        if array.shape != tuple(t.shape):
            raise ValueError(f"tensor {t.name}: produced shape {array.shape}, planned {t.shape}")
        arrays[t.name] = array
    tmp = path + ".tmp"  # a crash never leaves a truncated file under the final name
    save_file(arrays, tmp, metadata=_METADATA)
    os.replace(tmp, path)


def save_sharded(tensors: Iterable[LazyTensor], folder: str, max_shard_bytes: int = 5 * 10**9) -> list[str]:
    """Writes `model.safetensors` or, above `max_shard_bytes`, shards plus the index transformers reads.

    Returns:
      The names of the files written, in order.
    """
    shards: list[list[LazyTensor]] = [[]]
    size = total = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
        total += t.nbytes
    if len(shards) == 1:
        _write_shard(shards[0], os.path.join(folder, SINGLE_FILE))
        return [SINGLE_FILE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for fname, shard in zip(names, shards, strict=True):
        _write_shard(shard, os.path.join(folder, fname))
        weight_map.update({t.name: fname for t in shard})
    with open(os.path.join(folder, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return names
