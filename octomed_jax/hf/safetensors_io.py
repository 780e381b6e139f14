"""Reading and writing safetensors files with NumPy memory maps.

The format is an 8-byte little-endian header length, a JSON header (dtype, shape and byte offsets of
every tensor), then the raw bytes. Memory-mapping lets a host read only the slices of a tensor that
land on its devices, and `ml_dtypes` gives bfloat16 a NumPy dtype. No pickle anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Callable, Iterable
from typing import Any

import ml_dtypes
import numpy as np

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsFile:
    """Lazy, read-only view of one .safetensors file: `file[name]` is a memory-mapped array."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(header_len))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._header = header
        self._data_start = 8 + header_len
        self._mmap = np.memmap(path, dtype=np.uint8, mode="r") if os.path.getsize(path) > self._data_start else None

    def keys(self) -> list[str]:
        return list(self._header)

    def __contains__(self, name: str) -> bool:
        return name in self._header

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._header[name]["shape"])

    def __getitem__(self, name: str) -> np.ndarray:
        info = self._header[name]
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
        dtype = _DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        if start == end:
            return np.zeros(info["shape"], dtype)
        raw = self._mmap[self._data_start + start : self._data_start + end]
        return raw.view(dtype).reshape(info["shape"])


@dataclasses.dataclass(frozen=True)
class LazyTensor:
    """A tensor to write, produced only when its turn comes (so an export holds one at a time)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @classmethod
    def of(cls, name: str, array: np.ndarray) -> LazyTensor:
        return cls(name, tuple(array.shape), array.dtype, lambda: array)


def save_file(tensors: Iterable[LazyTensor], path: str, metadata: dict[str, str] | None = None) -> None:
    """Writes tensors to `path` atomically (a temporary file, then a rename)."""
    tensors = list(tensors)
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for t in tensors:
        if np.dtype(t.dtype) not in _NAMES:
            raise ValueError(f"tensor {t.name} has dtype {t.dtype}, which safetensors cannot store")
        header[t.name] = {
            "dtype": _NAMES[np.dtype(t.dtype)],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in tensors:
            a = np.ascontiguousarray(t.produce(), dtype=t.dtype)
            if a.shape != tuple(t.shape):
                raise ValueError(f"tensor {t.name}: produced shape {a.shape}, planned {t.shape}")
            f.write(a.tobytes())
    os.replace(tmp, path)


class Checkpoint:
    """All tensors of a checkpoint folder: one `model.safetensors`, or shards with an index."""

    def __init__(self, folder: str):
        index_path = os.path.join(folder, "model.safetensors.index.json")
        single = os.path.join(folder, "model.safetensors")
        if os.path.exists(index_path):
            with open(index_path) as f:
                weight_map: dict[str, str] = json.load(f)["weight_map"]
            files = {name: os.path.join(folder, fname) for name, fname in weight_map.items()}
        elif os.path.exists(single):
            files = None
        else:
            raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json")
        self._open: dict[str, SafetensorsFile] = {}
        if files is None:
            f = self._file(single)
            files = {name: single for name in f.keys()}
        for path in set(files.values()):
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path}: listed in the index but missing")
        self.files = files

    def _file(self, path: str) -> SafetensorsFile:
        if path not in self._open:
            self._open[path] = SafetensorsFile(path)
        return self._open[path]

    def keys(self) -> list[str]:
        return list(self.files)

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def __getitem__(self, name: str) -> np.ndarray:
        return self._file(self.files[name])[name]

    def where(self, name: str) -> str:
        return self.files[name]


def save_sharded(tensors: Iterable[LazyTensor], folder: str, max_shard_bytes: int = 5 * 10**9) -> list[str]:
    """Writes `model.safetensors` or, above `max_shard_bytes`, shards plus the index transformers reads."""
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
        save_file(shards[0], os.path.join(folder, "model.safetensors"))
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for fname, shard in zip(names, shards, strict=True):
        save_file(shard, os.path.join(folder, fname))
        weight_map.update({t.name: fname for t in shard})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return names
