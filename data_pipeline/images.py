"""Image checks and hashes shared by the source adapters and decontamination (PIL + numpy, no JAX).

Every image an adapter reads goes through `load_image` (a file under the source root) or
`image_ref_from_bytes` (bytes already in a Parquet column). Both raise `BadRecordError` with one of the
counted reasons below, so a bad image costs its own question and nothing else:

- `path_escape`: the path is absolute or resolves (symlinks included) outside the source root.
- `missing_image`: no file at the path, or an empty path.
- `corrupt_image`: PIL cannot identify or fully decode the bytes.
- `image_too_large`: more pixels than `max_pixels` (read from the header, before decoding), or a
  decompression bomb as PIL defines it.

Bytes are kept as read (no re-encoding) together with their format, so the training images are exactly the
source images.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image

from data_pipeline.records import BadRecordError, ImageRef

DEFAULT_MAX_PIXELS = 50_000_000
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
# PIL names some JPEG variants separately; training code only needs to know it is a JPEG.
_FORMAT_ALIASES = {"mpo": "jpeg", "jpg": "jpeg"}


def refuse_absolute(rel_path: str) -> str:
    """Returns the stripped path; raises `path_escape` if absolute, `missing_image` if empty."""
    text = str(rel_path).strip()
    if not text:
        raise BadRecordError("missing_image", "empty image path")
    # Check both path flavours so that "C:\\x" or "\\\\server\\x" is refused on any OS.
    win = PureWindowsPath(text)
    if PurePosixPath(text).is_absolute() or win.is_absolute() or win.drive:
        raise BadRecordError("path_escape", f"absolute image path {text!r} is not allowed")
    return text


def resolve_inside(root: str | Path, rel_path: str) -> Path:
    """Resolves `rel_path` under `root`, refusing anything that would leave it.

    Args:
      root: the source root directory.
      rel_path: a path relative to `root`, as written in the source's metadata.

    Returns:
      The resolved absolute path (it may not exist).

    Raises:
      BadRecordError: `path_escape` for an absolute path or one that resolves outside `root`,
        `missing_image` for an empty path.
    """
    text = str(rel_path).strip()
    if not text:
        raise BadRecordError("missing_image", "empty image path")
    # Check both path flavours so that "C:\\x" or "\\\\server\\x" is refused on any OS.
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() or PureWindowsPath(text).drive:
        raise BadRecordError("path_escape", f"absolute image path {text!r} is not allowed")
    root_resolved = Path(root).resolve()
    full = (root_resolved / text).resolve()  # resolve() follows symlinks: a link out of root is an escape
    if not full.is_relative_to(root_resolved):
        raise BadRecordError("path_escape", f"image path {text!r} escapes the source root {root_resolved}")
    return full


def inspect_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, decode: bool = True) -> tuple[str, int, int]:
    """Checks encoded image bytes: size from the header first, then (optionally) a full decode.

    Args:
      data: the encoded image.
      max_pixels: the largest width * height accepted.
      decode: decode the pixels to catch truncated or corrupt data (the header alone does not).

    Returns:
      (format, width, height), format lowercase ("png", "jpeg", ...).

    Raises:
      BadRecordError: `corrupt_image` or `image_too_large`.
    """
    if not data:
        raise BadRecordError("corrupt_image", "empty image data")
    try:
        with warnings.catch_warnings():
            # PIL warns (not raises) between MAX_IMAGE_PIXELS and twice that; treat both as a bomb.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                fmt = (im.format or "").lower()
                if width * height > max_pixels:
                    raise BadRecordError(
                        "image_too_large", f"{width}x{height} = {width * height} pixels > limit {max_pixels}"
                    )
                if decode:
                    im.load()
    except BadRecordError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadRecordError("image_too_large", str(e)) from e
    except Exception as e:  # PIL's decoders raise many unrelated types (OSError, SyntaxError, struct.error, ...)
        raise BadRecordError("corrupt_image", f"cannot decode image: {type(e).__name__}: {e}") from e
    return _FORMAT_ALIASES.get(fmt, fmt), width, height


def image_ref_from_bytes(
    data: bytes, *, path: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, decode: bool = True
) -> ImageRef:
    """Checks encoded bytes and wraps them as an `ImageRef` with their detected format."""
    fmt, _, _ = inspect_image(data, max_pixels=max_pixels, decode=decode)
    return ImageRef(data=bytes(data), format=fmt, path=path)


def load_image(
    root: str | Path,
    rel_path: str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode: bool = True,
    load_bytes: bool = True,
) -> ImageRef:
    """Reads and checks one image file inside a source root.

    Args:
      root: the source root; the image must resolve inside it.
      rel_path: the path relative to `root`.
      max_pixels: see `inspect_image`.
      decode: see `inspect_image`.
      load_bytes: keep the bytes in the ref; otherwise only the (checked) relative path is kept.

    Returns:
      An ImageRef with the original bytes and format (and the relative path for provenance).

    Raises:
      BadRecordError: `path_escape`, `missing_image`, `corrupt_image` or `image_too_large`.
    """
    full = resolve_inside(root, rel_path)
    if not full.is_file():
        raise BadRecordError("missing_image", f"image file not found: {full}")
    data = full.read_bytes()
    rel = full.relative_to(Path(root).resolve()).as_posix()
    ref = image_ref_from_bytes(data, path=rel, max_pixels=max_pixels, decode=decode)
    return ref if load_bytes else ImageRef(path=rel, format=ref.format)


# --- Hashes for decontamination -------------------------------------------------------------------------


def decode_rgb(data: bytes) -> np.ndarray:
    """Decodes an image to an RGB uint8 array (H, W, 3); alpha and palettes are flattened to RGB."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def pixel_hash(data: bytes) -> str:
    """Hash of the decoded RGB pixels and their shape: the same pixels in PNG, BMP or TIFF hash equal."""
    arr = decode_rgb(data)
    h = hashlib.sha256()
    h.update(np.asarray(arr.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def dhash(data: bytes, size: int = 8) -> int:
    """64-bit difference hash (for size 8): signs of horizontal gradients of a (size+1) x size thumbnail.

    Robust to re-encoding, rescaling and brightness/contrast shifts, which only move gradients a little.
    """
    with Image.open(io.BytesIO(data)) as im:
        thumb = im.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS)
    px = np.asarray(thumb, dtype=np.int16)
    bits = (px[:, 1:] > px[:, :-1]).flatten()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()
