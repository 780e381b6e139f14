"""Image helpers for the evaluation tests (a uniquely named module: `conftest` names collide across folders)."""

import base64
import io

import numpy as np
from PIL import Image


def png_bytes(seed: int, size: tuple[int, int] = (60, 84)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()
