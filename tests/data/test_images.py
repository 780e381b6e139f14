"""preprocess_image against transformers' Qwen2-VL image processor (PIL backend)."""

import io
import warnings

import numpy as np
import PIL.Image
import pytest

from octomed_jax.data import (
    MAX_PIXELS,
    MIN_PIXELS,
    OCTOMED_MAX_PIXELS,
    ImageError,
    image_grid_thw,
    num_image_tokens,
    preprocess_image,
    smart_resize,
)

transformers = pytest.importorskip("transformers")
# The PIL backend by name: `Qwen2VLImageProcessor` resolves to it only when torchvision is absent, and the
# torchvision backend resizes with torch, so it differs by design.
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402

TOL = 1e-5


def hf_process(image, max_pixels=MAX_PIXELS, min_pixels=MIN_PIXELS, **kwargs):
    processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = processor(images=[image], return_tensors="np", **kwargs)
    return out["pixel_values"], out["image_grid_thw"][0]


def assert_same(ours, theirs):
    (patches, grid), (hf_patches, hf_grid) = ours, theirs
    np.testing.assert_array_equal(grid, hf_grid)
    assert patches.dtype == np.float32
    assert patches.shape == hf_patches.shape == (int(np.prod(grid)), 3 * 2 * 14 * 14)
    np.testing.assert_allclose(patches, hf_patches, atol=TOL, rtol=0)


def random_image(rng, height, width, channels=3):
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def test_default_processor_is_the_pil_backend():
    # The reference the acceptance line names is this class here (no torchvision installed).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processor = transformers.Qwen2VLImageProcessor()
    if type(processor).__name__ != "Qwen2VLImageProcessorPil":
        pytest.skip("torchvision installed: Qwen2VLImageProcessor is the torchvision backend")
    assert processor.size["shortest_edge"] == MIN_PIXELS
    assert processor.size["longest_edge"] == MAX_PIXELS


SIZES = [
    (1, 1),
    (3, 5),
    (27, 29),
    (37, 91),
    (91, 37),
    (250, 3),
    (17, 1023),
    (224, 224),
    (513, 700),
    (999, 1001),
    (1537, 2049),
    (10, 1999),  # aspect ratio 199.9, just accepted
]


@pytest.mark.parametrize("max_pixels", [MAX_PIXELS, OCTOMED_MAX_PIXELS])
@pytest.mark.parametrize("height,width", SIZES)
def test_rgb_equals_transformers(height, width, max_pixels):
    rng = np.random.default_rng(height * 10_007 + width)
    image = PIL.Image.fromarray(random_image(rng, height, width))
    ours = preprocess_image(image, max_pixels=max_pixels)
    assert_same(ours, hf_process(image, max_pixels=max_pixels))
    grid = ours[1]
    assert grid[1] * grid[2] * 14 * 14 <= max_pixels
    assert grid[1] % 2 == 0 and grid[2] % 2 == 0


def _pil_modes(rng):
    rgba = random_image(rng, 45, 77, 4)
    rgba[..., 3] = rng.choice([0, 64, 128, 255], size=rgba.shape[:2]).astype(np.uint8)
    rgb = PIL.Image.fromarray(rgba[..., :3])
    palette_transparent = rgb.quantize(16)
    palette_transparent.info["transparency"] = 3
    return {
        "L": PIL.Image.fromarray(random_image(rng, 45, 77, 1)),
        "LA": PIL.Image.fromarray(rgba).convert("LA"),
        "RGBA": PIL.Image.fromarray(rgba),
        "P": rgb.quantize(16),
        "P_transparency": palette_transparent,
        "1": PIL.Image.fromarray(random_image(rng, 45, 77, 1)).convert("1"),
        "CMYK": rgb.convert("CMYK"),
    }


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "P_transparency", "1", "CMYK"])
def test_pil_modes_equal_transformers(mode):
    image = _pil_modes(np.random.default_rng(1))[mode]
    assert_same(preprocess_image(image), hf_process(image))


def test_transparency_is_composited_on_white():
    rgba = np.zeros((56, 56, 4), dtype=np.uint8)  # fully transparent black
    patches, _ = preprocess_image(PIL.Image.fromarray(rgba))
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    white = (1.0 - mean) / std
    per_channel = patches.reshape(-1, 3, 2 * 14 * 14).transpose(1, 0, 2).reshape(3, -1)
    np.testing.assert_allclose(per_channel.mean(axis=1), white, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_numpy_inputs_equal_transformers(channels):
    rng = np.random.default_rng(channels)
    array = random_image(rng, 61, 43, channels)
    hf = hf_process(array[..., None] if channels == 1 else array, input_data_format="channels_last")
    assert_same(preprocess_image(array), hf)
    if channels == 1:
        assert_same(preprocess_image(array[..., None]), hf)


def test_numpy_and_pil_agree_without_alpha():
    array = random_image(np.random.default_rng(5), 70, 33)
    np.testing.assert_array_equal(preprocess_image(array)[0], preprocess_image(PIL.Image.fromarray(array))[0])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_encoded_bytes_equal_transformers(fmt):
    image = PIL.Image.fromarray(random_image(np.random.default_rng(7), 83, 120))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    data = buffer.getvalue()
    assert_same(preprocess_image(data), hf_process(PIL.Image.open(io.BytesIO(data))))


def test_exif_orientation_is_applied_to_bytes():
    image = PIL.Image.fromarray(random_image(np.random.default_rng(8), 56, 140))  # wide
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    _, grid = preprocess_image(buffer.getvalue())
    assert grid[1] > grid[2]  # displayed upright: tall


@pytest.mark.parametrize("mode", ["I;16", "uint16_array"])
def test_16_bit_images_are_scaled_not_saturated(mode):
    rng = np.random.default_rng(9)
    values = rng.integers(1000, 4096, (64, 80)).astype(np.uint16)  # a 12-bit scan in 16-bit storage
    image = PIL.Image.fromarray(values) if mode == "I;16" else values
    if mode == "I;16":
        assert image.mode == "I;16"
    patches, grid = preprocess_image(image)
    # Equal to transformers on the min-max scaled 8-bit image ...
    lo, hi = float(values.min()), float(values.max())
    scaled = np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    assert_same((patches, grid), hf_process(PIL.Image.fromarray(scaled)))
    # ... whereas PIL's own conversion (what transformers does with I;16) saturates to white.
    saturated, _ = hf_process(PIL.Image.fromarray(values))
    per_channel = lambda p: p.reshape(-1, 3, 2 * 14 * 14).transpose(1, 0, 2).reshape(3, -1)
    assert np.ptp(per_channel(saturated), axis=1).max() < 1e-6
    assert np.ptp(per_channel(patches), axis=1).min() > 3.0


def test_constant_16_bit_image():
    patches, grid = preprocess_image(np.full((30, 30), 40000, dtype=np.uint16))
    assert np.all(np.isfinite(patches)) and tuple(grid) == (1, 4, 4)


def test_temporal_copies_are_identical():
    patches, grid = preprocess_image(random_image(np.random.default_rng(3), 100, 60))
    frames = patches.reshape(-1, 3, 2, 14, 14)
    np.testing.assert_array_equal(frames[:, :, 0], frames[:, :, 1])


def test_patch_order_follows_merge_windows():
    # A 56x56 image whose 14x14 patches each carry their (row, col) index: the patch order must be
    # window by window (2x2 patches), row-major inside a window.
    grid = np.arange(16).reshape(4, 4)
    pixels = np.kron(grid * 15, np.ones((14, 14))).astype(np.uint8)
    patches, thw = preprocess_image(pixels, min_pixels=56 * 56)
    assert tuple(thw) == (1, 4, 4)
    order = np.rint((patches[:, 0] * 0.26862954 + 0.48145466) * 255 / 15).astype(int)
    expected = [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    assert order.tolist() == expected


def test_extreme_aspect_ratio_raises_like_transformers():
    image = PIL.Image.new("RGB", (402, 2))  # 201:1
    with pytest.raises(ImageError, match="aspect ratio"):
        preprocess_image(image)
    with pytest.raises(ValueError, match="aspect ratio"):
        hf_process(image)


@pytest.mark.parametrize("bad", [b"not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, b""])
def test_corrupt_bytes_raise_image_error(bad):
    with pytest.raises(ImageError, match="cannot decode"):
        preprocess_image(bad)


def test_bad_arrays_raise():
    with pytest.raises(ImageError, match="channels last"):
        preprocess_image(np.zeros((3, 20, 20), dtype=np.uint8))
    with pytest.raises(ImageError, match="no pixels"):
        preprocess_image(np.zeros((0, 20, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="unsupported image type"):
        preprocess_image("path/to/image.png")


@pytest.mark.parametrize("height,width", SIZES)
def test_grid_helpers(height, width):
    grid = image_grid_thw(height, width, max_pixels=OCTOMED_MAX_PIXELS)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    patches, real_grid = preprocess_image(image, max_pixels=OCTOMED_MAX_PIXELS)
    np.testing.assert_array_equal(grid, real_grid)
    assert num_image_tokens(grid) * 4 == patches.shape[0]


def test_num_image_tokens_and_smart_resize_values():
    assert num_image_tokens([1, 4, 6]) == 6
    assert num_image_tokens(np.array([1, 36, 36])) == 324
    with pytest.raises(ValueError):
        num_image_tokens([1, 3, 4])
    assert smart_resize(512, 512, max_pixels=OCTOMED_MAX_PIXELS) == (504, 504)
    assert smart_resize(1, 1) == (56, 56)  # tiny images are scaled up to min_pixels
    assert smart_resize(1080, 1920) == (728, 1316)  # beta = sqrt(1080*1920/1003520); floor to 28
    assert smart_resize(1000, 700) == (1008, 700)  # within bounds: round to multiples of 28
    h, w = smart_resize(4000, 3000, max_pixels=OCTOMED_MAX_PIXELS)
    assert h * w <= OCTOMED_MAX_PIXELS and (h, w) == (588, 420)
