"""Image checks and hashes shared by the source adapters and decontamination (PIL + numpy, no JAX).

Every image an adapter reads goes through `load_image` (a file under the source root) or
`image_ref_from_bytes` (bytes already in a Parquet column). Both raise `BadRecordError` with one of the
counted reasons below, so a bad image costs its own question and nothing else:

- `path_escape`: the path is absolute or resolves (symlinks included) outside the source root.
- `missing_image`: no file at the path, or an empty path.
- `corrupt_image`: PIL cannot identify or fully decode the bytes.
- `image_too_large`: more pixels than `max_pixels` (read from the header, before decoding), or a
  decompression bomb as PIL defines it.
- `bad_aspect_ratio`: the long side over 200 times the short side (Qwen2.5-VL's processor refuses it).

The rules of the model's image preprocessing live here, so that the build and
`octomed_jax.data.images.preprocess_image` apply the same ones and nothing the build accepts is refused in
training, evaluation or serving: `check_dimensions` (no pixels, aspect ratio) and `open_image` (full
decode, bomb guard, EXIF orientation). The orientation tag is applied when PIL can read it, and an EXIF
block it cannot parse counts as no orientation. PIL's `exif_transpose` is not used: it rewrites the whole
block after rotating and raises `struct.error` when another tag's value does not fit its type, though the
pixels are fine.

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
# Qwen2.5-VL's processor (transformers' `smart_resize`) refuses images more elongated than this.
MAX_ASPECT_RATIO = 200
_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that shows the image upright (as PIL's `ImageOps.exif_transpose`).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


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


def check_dimensions(width: int, height: int) -> None:
    """The size rules of the model's preprocessing: some pixels, aspect ratio at most `MAX_ASPECT_RATIO`.

    Raises:
      BadRecordError: `corrupt_image` (no pixels) or `bad_aspect_ratio`.
    """
    if width <= 0 or height <= 0:
        raise BadRecordError("corrupt_image", f"image has no pixels: {width}x{height} (width x height)")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise BadRecordError(
            "bad_aspect_ratio",
            f"image {width}x{height} (width x height) has aspect ratio {ratio:g} > {MAX_ASPECT_RATIO}; "
            "Qwen2.5-VL's processor refuses it",
        )


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8) of an image; 1 (as stored) when it has none or its EXIF is malformed."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # PIL's EXIF parser raises struct.error, SyntaxError, ValueError, ... on bad blocks
        return 1
    return value if isinstance(value, int) and value in _ORIENTATION_TRANSPOSE else 1


def open_image(data: bytes) -> Image.Image:
    """Decodes encoded image bytes fully and turns them upright by their EXIF orientation.

    The pixels equal `ImageOps.exif_transpose(Image.open(...))` (what transformers' `load_image` gives)
    whenever that succeeds, and also when it raises on a block whose orientation tag is readable; an EXIF
    block PIL cannot parse counts as no orientation.

    Raises:
      BadRecordError: `corrupt_image` (undecodable or empty) or `image_too_large` (PIL's bomb guard,
        its warning threshold included).
    """
    if not data:
        raise BadRecordError("corrupt_image", "cannot decode image: no bytes")
    try:
        with warnings.catch_warnings():
            # PIL warns (not raises) between MAX_IMAGE_PIXELS and twice that; treat both as a bomb.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadRecordError("image_too_large", str(e)) from e
    except Exception as e:  # PIL's decoders raise many unrelated types (OSError, SyntaxError, struct.error, ...)
        raise BadRecordError("corrupt_image", f"cannot decode image: {type(e).__name__}: {e}") from e
    method = _ORIENTATION_TRANSPOSE.get(exif_orientation(image))
    return image if method is None else image.transpose(method)


def inspect_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, decode: bool = True) -> tuple[str, int, int]:
    """Checks encoded image bytes: size from the header first, then (optionally) the model's decode.

    Args:
      data: the encoded image.
      max_pixels: the largest width * height accepted.
      decode: decode the pixels as `open_image` (the model's preprocessing) does, to catch truncated or
        corrupt data (the header alone does not).

    Returns:
      (format, width, height), format lowercase ("png", "jpeg", ...).

    Raises:
      BadRecordError: `corrupt_image`, `image_too_large` or `bad_aspect_ratio`.
    """
    if not data:
        raise BadRecordError("corrupt_image", "empty image data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                fmt = (im.format or "").lower()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadRecordError("image_too_large", str(e)) from e
    except Exception as e:  # see open_image
        raise BadRecordError("corrupt_image", f"cannot read image header: {type(e).__name__}: {e}") from e
    if width * height > max_pixels:
        raise BadRecordError("image_too_large", f"{width}x{height} = {width * height} pixels > limit {max_pixels}")
    check_dimensions(width, height)  # EXIF orientation swaps the sides, which leaves the ratio as it is
    if decode:
        open_image(data)
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
      BadRecordError: `path_escape`, `missing_image`, `corrupt_image`, `image_too_large` or `bad_aspect_ratio`.
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
