"""InternVL3.5 image preprocessing in NumPy/PIL: dynamic tiling into fixed-size tiles plus a thumbnail.

Equal to transformers' `GotOcr2ImageProcessor` as `InternVLProcessor` calls it (`crop_to_patches=True`), PIL
backend (`models/got_ocr2/image_processing_pil_got_ocr2.py`), with the parameters of the InternVL3.5 "-HF"
preprocessor_config.json: 448-pixel tiles, 1 to 12 of them, bicubic, ImageNet mean and std (InternVL's own
code normalises with these; the -HF file's values could not be checked against transformers' docs or tests).

1. convert to 8-bit RGB as the Qwen path does (`images.to_rgb_uint8`: transformers' `convert_to_rgb`, plus our
   documented handling of 16-bit and float images);
2. pick the tile grid (columns, rows) whose aspect ratio is closest to the image's among those with
   min_tiles..max_tiles tiles (ties: the grid with more tiles while the image covers more than half of it);
3. resize the uint8 image (PIL bicubic) to the grid, cut it into tiles row by row, and, if there is more than
   one, append a thumbnail (the whole image resized to one tile);
4. rescale by 1/255 (float64, then float32) and normalise (float32), channels first.

Every tile becomes `image_seq_length` (256) `<IMG_CONTEXT>` tokens; the model takes the tiles as they come
(`models.internvl.VisionInputs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image

from octomed_jax.data.images import ImageInput, to_rgb_uint8

TILE_SIZE = 448
MIN_TILES = 1
MAX_TILES = 12
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def tile_grid(height: int, width: int, *, tile_size: int = TILE_SIZE, min_tiles: int = MIN_TILES,
              max_tiles: int = MAX_TILES) -> tuple[int, int]:
    """(columns, rows) of the tiling of a `height` x `width` image, as transformers' `get_optimal_tiled_canvas`."""
    # Candidates by tile count, then in (columns, rows) generation order: the order decides the ties.
    grids = sorted(((c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1)
                    if min_tiles <= c * r <= max_tiles), key=lambda g: g[0] * g[1])
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for columns, rows in grids:
        diff = abs(aspect - columns / rows)
        if diff < best_diff:
            best, best_diff = (columns, rows), diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * columns * rows:
            best = (columns, rows)  # an equally close grid with more tiles, while the image fills half of it
    return best


def num_tiles(height: int, width: int, *, tile_size: int = TILE_SIZE, min_tiles: int = MIN_TILES,
              max_tiles: int = MAX_TILES, use_thumbnail: bool = True) -> int:
    """Tiles of a `height` x `width` image, the thumbnail included (without decoding it)."""
    columns, rows = tile_grid(height, width, tile_size=tile_size, min_tiles=min_tiles, max_tiles=max_tiles)
    return columns * rows + int(use_thumbnail and columns * rows > 1)


def _resize(image: PIL.Image.Image, width: int, height: int) -> np.ndarray:
    return np.asarray(image.resize((width, height), resample=PIL.Image.Resampling.BICUBIC))


def preprocess_tiles(
    image: ImageInput,
    *,
    tile_size: int = TILE_SIZE,
    min_tiles: int = MIN_TILES,
    max_tiles: int = MAX_TILES,
    use_thumbnail: bool = True,
    image_mean: Sequence[float] = IMAGENET_MEAN,
    image_std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Turns one image into InternVL's vision-tower input, as transformers' InternVL processor does.

    Args:
      image: a PIL image of any mode, encoded image bytes, or a channels-last NumPy array (`images.to_rgb_uint8`).
      tile_size: the tile side in pixels (the vision tower's `image_size`).
      min_tiles, max_tiles: the bounds on the grid's tile count (the thumbnail not counted).
      use_thumbnail: append the whole image as one more tile when the grid has more than one.
      image_mean, image_std: per-channel normalisation of the [0, 1] pixels.

    Returns:
      float32 [tiles, 3, tile_size, tile_size]: the grid's tiles row by row, then the thumbnail.

    Raises:
      ImageError: undecodable bytes, an empty image or an unsupported array.
    """
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f"need 1 <= min_tiles ({min_tiles}) <= max_tiles ({max_tiles})")
    rgb = to_rgb_uint8(image)
    height, width = rgb.shape[:2]
    columns, rows = tile_grid(height, width, tile_size=tile_size, min_tiles=min_tiles, max_tiles=max_tiles)
    pil = PIL.Image.fromarray(rgb)
    canvas = _resize(pil, tile_size * columns, tile_size * rows)
    tiles = [canvas[r * tile_size:(r + 1) * tile_size, c * tile_size:(c + 1) * tile_size]
             for r in range(rows) for c in range(columns)]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(_resize(pil, tile_size, tile_size))
    # Same dtypes as transformers: rescale in float64 then cast, normalise in float32.
    pixels = (np.stack(tiles).astype(np.float64) * (1 / 255)).astype(np.float32)
    mean, std = np.asarray(image_mean, np.float32), np.asarray(image_std, np.float32)
    return ((pixels - mean) / std).transpose(0, 3, 1, 2)


def tiles_as_patches(image: ImageInput, *, tile_size: int = TILE_SIZE, patch_size: int = 14,
                     **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """`preprocess_tiles` in the data path's layout (`images.preprocess_image`'s outputs), for packing.

    Each tile's values in order, cut into rows of one patch's size: [tiles * (tile_size / patch_size)^2,
    3 * patch_size^2] (a reshape: `models.internvl.VisionInputs` reshapes them back into tiles), and the grid
    (tiles, tile_size / patch_size, tile_size / patch_size), whose product is the rows and whose merged count
    (`images.num_image_tokens`) is the image's `<IMG_CONTEXT>` tokens (256 per 448-pixel tile).

    Args:
      image: as `preprocess_tiles`.
      tile_size, patch_size: the vision tower's tile side and patch size.
      **options: `preprocess_tiles`' other keyword arguments (tile bounds, thumbnail, normalisation).
    """
    tiles = preprocess_tiles(image, tile_size=tile_size, **options)
    side = tile_size // patch_size
    grid = np.array([len(tiles), side, side], np.int64)
    return tiles.reshape(len(tiles) * side * side, -1), grid


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MAX_TILES", "MIN_TILES", "TILE_SIZE", "num_tiles", "preprocess_tiles",
           "tile_grid", "tiles_as_patches"]
