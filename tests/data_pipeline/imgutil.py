"""Image bytes for the data_pipeline tests (imported by path, like fake_openai)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def pattern(h: int = 32, w: int = 48, seed: int = 0) -> np.ndarray:
    """A smooth, textured RGB array: distinct seeds give distinct dHashes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    fx, fy, phase = rng.uniform(0.05, 0.4, size=3)
    base = 127 + 100 * np.sin(fx * xx + phase) * np.cos(fy * yy)
    noise = rng.normal(0, 10, size=(h, w))
    gray = np.clip(base + noise, 0, 255)
    return np.stack([gray, gray * 0.8, 255 - gray], axis=-1).astype(np.uint8)


def encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def png(seed: int = 0, h: int = 32, w: int = 48) -> bytes:
    return encode(pattern(h, w, seed))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds (almost) no pixel data: a bomb-sized header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def corrupt_png() -> bytes:
    """A real PNG cut in half: the header parses, decoding fails."""
    data = png(seed=1, h=64, w=64)
    return data[: len(data) // 2]
