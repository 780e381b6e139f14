"""InternVL's dynamic tiling against transformers' GotOcr2 image processor (PIL backend), as InternVL uses it."""

import warnings

import numpy as np
import PIL.Image
import pytest

from octomed_jax.data.internvl_images import IMAGENET_MEAN, IMAGENET_STD, num_tiles, preprocess_tiles, tile_grid

transformers = pytest.importorskip("transformers")
# The PIL backend by name (the torchvision one resizes with torch, so it differs by design).
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def processor():
    """The InternVL3.5 -HF processor's image settings: 448-pixel tiles, 1..12 of them, bicubic, ImageNet stats."""
    return GotOcr2ImageProcessorPil(crop_to_patches=True, min_patches=1, max_patches=12, size={"height": 448,
                                    "width": 448}, resample=PIL.Image.Resampling.BICUBIC, image_mean=IMAGENET_MEAN,
                                    image_std=IMAGENET_STD)


def hf_tiles(processor, image):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = processor(images=[image], return_tensors="np")
    return out["pixel_values"], int(out["num_patches"][0])


@pytest.mark.parametrize(("height", "width", "grid"), [
    (300, 900, (3, 1)),    # wide: 3 x 1 tiles + thumbnail
    (1000, 1000, (3, 3)),  # square: ties broken towards more tiles while the image fills half the grid
    (200, 180, (1, 1)),    # small: one tile, no thumbnail
])
def test_tiles_equal_transformers(processor, height, width, grid):
    image = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ref, ref_count = hf_tiles(processor, image)
    ours = preprocess_tiles(image)
    assert tile_grid(height, width) == grid
    expected = grid[0] * grid[1] + (grid != (1, 1))
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (expected, 3, 448, 448)
    assert num_tiles(height, width) == ref_count == processor.get_number_of_image_patches(height, width) == expected
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


def test_modes_as_transformers_converts_them(processor):
    """A tall RGBA image (transparency onto white) and a grayscale one go through the same RGB conversion."""
    rng = np.random.default_rng(7)
    rgba = PIL.Image.fromarray(rng.integers(0, 256, (700, 260, 4), dtype=np.uint8), "RGBA")
    gray = PIL.Image.fromarray(rng.integers(0, 256, (90, 500), dtype=np.uint8), "L")
    for image in (rgba, gray):
        ref, _ = hf_tiles(processor, image)
        np.testing.assert_allclose(preprocess_tiles(image), ref, atol=TOL, rtol=0)
