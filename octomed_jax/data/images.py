"""Qwen2.5-VL and Qwen3-VL image preprocessing in NumPy/PIL, equal to transformers' `Qwen2VLImageProcessor`.

Both families use that processor; they differ in its parameters (`family_options`): Qwen2.5-VL 14-pixel
patches and the OpenAI CLIP mean and std, Qwen3-VL 16-pixel patches and mean = std = 0.5.

The steps and their order follow the PIL backend of transformers 5.x
(`models/qwen2_vl/image_processing_pil_qwen2_vl.py`), so that a model trained on these patches sees
at serving time (transformers, vLLM) the pixels it was trained on:

1. convert to 8-bit RGB, compositing transparency onto white (transformers' `convert_to_rgb`);
2. `smart_resize` the size to multiples of `patch_size * merge_size` within [min_pixels, max_pixels];
3. resize with PIL bicubic on the uint8 image;
4. rescale by 1/255 (in float64, then float32) and normalise with the family's mean and std (float32);
5. patchify to `[grid_h * grid_w, 3 * temporal_patch_size * patch_size * patch_size]`, the single frame
   repeated `temporal_patch_size` times, patches ordered by merge window (the vision merger groups
   `merge_size x merge_size` consecutive patches).

One deliberate difference: 16-bit and float images (PIL modes I;16*, I, F or uint16/float arrays).
transformers converts them with `PIL.Image.convert("RGB")`, which clips every value above 255 and turns
a 16-bit scan into a near-white image. Here they are scaled min-max to 8 bits first, then treated as
grayscale; images that are already 8-bit are processed exactly as transformers does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image

from data_pipeline import images as source_images
from data_pipeline.records import BadRecordError

if TYPE_CHECKING:
    from octomed_jax.models.config import ModelConfig

# Qwen2.5-VL processor defaults (preprocessor_config.json of the Hub checkpoints).
PATCH_SIZE = 14
TEMPORAL_PATCH_SIZE = 2
MERGE_SIZE = 2
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 1280
# The OctoMed recipe caps images at 512 x 512 pixels.
OCTOMED_MAX_PIXELS = 262_144

# transformers.image_utils.OPENAI_CLIP_MEAN / OPENAI_CLIP_STD.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Qwen3-VL's preprocessor_config.json: 16-pixel patches, mean = std = 0.5, area within [2^16, 2^24] pixels.
QWEN3_VL_MIN_PIXELS = 65_536
QWEN3_VL_MAX_PIXELS = 16_777_216
# Each family's normalisation (image_mean, image_std of its preprocessor_config.json).
FAMILY_NORMALIZATION = {
    "qwen2_5_vl": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    "qwen3_vl": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}  # InternVL: ImageNet's (`internvl_images`)

# PIL modes holding more than 8 bits per sample: PIL's convert("RGB") would clip them at 255.
_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")

ImageInput = PIL.Image.Image | bytes | bytearray | memoryview | np.ndarray


class ImageError(ValueError):
    """An image that cannot be preprocessed (undecodable, empty, or too elongated).

    Attributes:
      reason: the build's name for the problem (`data_pipeline.images`): "corrupt_image",
        "image_too_large" or "bad_aspect_ratio".
    """

    def __init__(self, message: str, reason: str = "corrupt_image"):
        super().__init__(message)
        self.reason = reason

    @classmethod
    def of(cls, error: BadRecordError) -> ImageError:
        """The same problem as the build's check reported it."""
        return cls(str(error), error.reason)


def family_options(model: ModelConfig) -> dict[str, Any]:
    """`preprocess_image`'s keyword arguments that the model fixes: its vision tower's patch, temporal patch and
    merge sizes and its family's normalisation (the run contract writes them to `preprocessor_config.json`);
    InternVL: its tile side, patch size and ImageNet normalisation (`preprocess_image(tile_size=...)`)."""
    v = model.vision
    if model.traits.tiled:
        from octomed_jax.data.internvl_images import IMAGENET_MEAN, IMAGENET_STD

        return {"tile_size": v.image_size, "patch_size": v.patch_size, "image_mean": IMAGENET_MEAN,
                "image_std": IMAGENET_STD}
    mean, std = FAMILY_NORMALIZATION[model.family]
    return {"patch_size": v.patch_size, "temporal_patch_size": v.temporal_patch_size,
            "merge_size": v.spatial_merge_size, "image_mean": mean, "image_std": std}


def smart_resize(
    height: int,
    width: int,
    factor: int = PATCH_SIZE * MERGE_SIZE,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int]:
    """Target size of an image: multiples of `factor`, area within [min_pixels, max_pixels], aspect kept.

    The same arithmetic as transformers' `qwen2_vl.smart_resize` (which Qwen's own `qwen-vl-utils`
    also uses), including its rounding, so that grids agree to the patch.

    Args:
      height: input height in pixels.
      width: input width in pixels.
      factor: both outputs are multiples of it (patch_size * merge_size).
      min_pixels: lower bound of the output area (tiny images are scaled up to it).
      max_pixels: upper bound of the output area.

    Returns:
      (resized_height, resized_width).

    Raises:
      ImageError: on an empty image or an aspect ratio above 200 (transformers raises ValueError there too).
    """
    try:
        source_images.check_dimensions(width, height)  # the build checks images with the same rules
    except BadRecordError as e:
        raise ImageError.of(e) from e
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if h_bar <= 0 or w_bar <= 0:
        # Only reachable with min_pixels < factor**2, which transformers would then fail on later.
        raise ImageError(
            f"smart_resize of {height}x{width} gives {h_bar}x{w_bar}; raise min_pixels to at least {factor**2}"
        )
    return h_bar, w_bar


def image_grid_thw(
    height: int,
    width: int,
    *,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
    patch_size: int = PATCH_SIZE,
    merge_size: int = MERGE_SIZE,
) -> np.ndarray:
    """The `grid_thw` an image of this size gets, without decoding or resizing it.

    Args:
      height: image height in pixels.
      width: image width in pixels.
      min_pixels: as in `preprocess_image`.
      max_pixels: as in `preprocess_image`.
      patch_size: as in `preprocess_image`.
      merge_size: as in `preprocess_image`.

    Returns:
      int64 array [1, grid_h, grid_w].
    """
    h, w = smart_resize(height, width, patch_size * merge_size, min_pixels, max_pixels)
    return np.array([1, h // patch_size, w // patch_size], dtype=np.int64)


def num_image_tokens(grid_thw: np.ndarray | tuple[int, ...] | list[int], merge_size: int = MERGE_SIZE) -> int:
    """Number of `<|image_pad|>` tokens (merged patches) one image takes in the token sequence.

    Args:
      grid_thw: (grid_t, grid_h, grid_w) of the image, in patches.
      merge_size: spatial merge of the vision tower (2 for Qwen2.5-VL).

    Returns:
      grid_t * grid_h * grid_w // merge_size**2.
    """
    t, h, w = (int(x) for x in np.asarray(grid_thw).reshape(3))
    if h % merge_size or w % merge_size:
        raise ValueError(f"grid {(t, h, w)} is not divisible by merge_size {merge_size}")
    return t * h * w // (merge_size * merge_size)


def _high_bit_to_uint8(values: np.ndarray) -> np.ndarray:
    """Min-max scales a 16-bit or float array to uint8 (see the module docstring for why)."""
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    lo, hi = values[finite].min(), values[finite].max()
    values = np.where(finite, values, lo)
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _pil_to_rgb(image: PIL.Image.Image) -> np.ndarray:
    """uint8 [H, W, 3] as transformers' `convert_to_rgb` (PIL branch) makes it."""
    if image.mode in _HIGH_BIT_MODES:
        image = PIL.Image.fromarray(_high_bit_to_uint8(np.asarray(image)))
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        # PIL's integer alpha compositing onto white, exactly as transformers does it for PIL inputs.
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = PIL.Image.alpha_composite(background, rgba).convert("RGB")
    else:
        rgb = image.convert("RGB")
    return np.asarray(rgb)


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] from a channels-last array, as transformers' `convert_to_rgb` (NumPy branch)."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ImageError(
            f"array images must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] (channels last); got {array.shape}"
        )
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise ImageError(f"unsupported array dtype {array.dtype}")
        # 16-bit / float data: scale colour channels together, keep an alpha channel's meaning.
        color = _high_bit_to_uint8(array[..., :3] if array.shape[-1] == 4 else array)
        if array.shape[-1] == 4:
            alpha = array[..., 3:].astype(np.float64)
            alpha_max = 1.0 if np.issubdtype(array.dtype, np.floating) else float(np.iinfo(array.dtype).max)
            alpha = np.round(np.clip(alpha / alpha_max, 0.0, 1.0) * 255.0).astype(np.uint8)
            color = np.concatenate([color, alpha], axis=-1)
        array = color
    channels = array.shape[-1]
    if channels == 1:
        return np.repeat(array, 3, axis=-1)
    if channels == 4:
        # transformers' NumPy branch: float blend onto white, rounded (differs from PIL's integer blend).
        alpha = array[..., 3:4] / 255
        composite = alpha * array[..., :3] + (1 - alpha) * 255
        return np.round(composite).astype(np.uint8)
    return np.ascontiguousarray(array)


def load_image(data: bytes | bytearray | memoryview) -> PIL.Image.Image:
    """Decodes encoded image bytes (PNG, JPEG, ...) and applies the EXIF orientation.

    transformers' `load_image` also applies `exif_transpose`, so a photo is seen upright either way. The
    decode is the build's (`data_pipeline.images.open_image`): EXIF that PIL cannot parse means no orientation.

    Raises:
      ImageError: when the bytes cannot be decoded, or PIL's decompression-bomb guard trips.
    """
    try:
        return source_images.open_image(bytes(data))
    except BadRecordError as e:
        raise ImageError.of(e) from e


def to_rgb_uint8(image: ImageInput) -> np.ndarray:
    """Any supported input as a uint8 RGB array [H, W, 3], the input to resizing.

    Args:
      image: a PIL image (any mode), encoded bytes, or a channels-last NumPy array.

    Returns:
      uint8 array [H, W, 3].
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        image = load_image(image)
    if isinstance(image, PIL.Image.Image):
        rgb = _pil_to_rgb(image)
    elif isinstance(image, np.ndarray):
        rgb = _array_to_rgb(image)
    else:
        raise ImageError(f"unsupported image type {type(image).__name__}; pass a PIL image, bytes or ndarray")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"image has no pixels: {rgb.shape[0]}x{rgb.shape[1]}")
    return rgb


def patchify(
    image: np.ndarray,
    *,
    patch_size: int = PATCH_SIZE,
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
    merge_size: int = MERGE_SIZE,
) -> np.ndarray:
    """Flattens a normalised [C, H, W] float32 image to Qwen2-VL patches.

    Row order: merge window (row-major over the grid of windows), then the merge_size x merge_size
    patches inside the window, row-major. Column order: channel, temporal copy, patch row, patch column.

    Returns:
      float32 [grid_h * grid_w, C * temporal_patch_size * patch_size * patch_size].
    """
    channels, height, width = image.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    m, p = merge_size, patch_size
    x = image.reshape(channels, grid_h // m, m, p, grid_w // m, m, p)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # (gh/m, gw/m, m, m, C, p, p)
    # One still frame fills every temporal slot of the 3-D patch embedding.
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], temporal_patch_size, *x.shape[5:]))
    return np.ascontiguousarray(x.reshape(grid_h * grid_w, channels * temporal_patch_size * p * p))


def preprocess_image(
    image: ImageInput,
    *,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
    patch_size: int = PATCH_SIZE,
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
    merge_size: int = MERGE_SIZE,
    image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
    image_std: Sequence[float] = OPENAI_CLIP_STD,
    tile_size: int = 0,
    max_tiles: int = 12,
) -> tuple[np.ndarray, np.ndarray]:
    """Turns one image into vision-tower input, as `Qwen2VLImageProcessor` does with these parameters.

    With `tile_size` (InternVL), InternVL's tiles instead (`internvl_images.tiles_as_patches`, up to `max_tiles`
    plus a thumbnail; the pixel bounds and merge sizes do not apply).

    The defaults are Qwen2.5-VL's; `family_options(model)` gives any family's sizes and normalisation.

    Args:
      image: a PIL image of any mode (L, P, RGBA, LA, CMYK, I;16, ...), encoded image bytes, or a
        channels-last NumPy array ([H, W] or [H, W, 1|3|4]; uint8 as-is, 16-bit or float min-max scaled).
      min_pixels: smallest resized area; smaller images are scaled up (default 56*56, Qwen's).
      max_pixels: largest resized area (default 28*28*1280, Qwen's; OctoMed uses `OCTOMED_MAX_PIXELS`).
      patch_size: vision patch size.
      temporal_patch_size: frames per 3-D patch; a still image is repeated to fill them.
      merge_size: spatial merge of the vision merger; resized sides are multiples of patch*merge.
      image_mean, image_std: per-channel normalisation of the [0, 1] pixels.

    Returns:
      patches: float32 [grid_h * grid_w, 3 * temporal_patch_size * patch_size**2].
      grid_thw: int64 [3], (1, grid_h, grid_w).

    Raises:
      ImageError: undecodable bytes, an empty image, an unsupported array, or an aspect ratio above 200.
    """
    if tile_size:
        from octomed_jax.data.internvl_images import tiles_as_patches

        return tiles_as_patches(image, tile_size=tile_size, patch_size=patch_size, max_tiles=max_tiles,
                                image_mean=image_mean, image_std=image_std)
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels {min_pixels} > max_pixels {max_pixels}")
    rgb = to_rgb_uint8(image)
    height, width = rgb.shape[:2]
    resized_h, resized_w = smart_resize(height, width, patch_size * merge_size, min_pixels, max_pixels)
    # transformers resizes the uint8 image through PIL even when the size is unchanged; so do we.
    resized = np.asarray(PIL.Image.fromarray(rgb).resize((resized_w, resized_h), resample=PIL.Image.Resampling.BICUBIC))
    # Same dtypes as transformers: rescale in float64 then cast, normalise in float32.
    pixels = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(image_mean, dtype=np.float32)
    std = np.asarray(image_std, dtype=np.float32)
    pixels = ((pixels - mean) / std).transpose(2, 0, 1)
    patches = patchify(pixels, patch_size=patch_size, temporal_patch_size=temporal_patch_size, merge_size=merge_size)
    grid_thw = np.array([1, resized_h // patch_size, resized_w // patch_size], dtype=np.int64)
    return patches, grid_thw
