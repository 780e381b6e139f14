"""What the build accepts is trained on; a bad example in old shards is skipped and counted, never raised.

Before: a teacher trace holding `<|im_end|><|im_start|>user` was accepted by the build and skipped by every
training run as `template_error`; a JPEG with a malformed EXIF block passed the build, then `exif_transpose`
raised `struct.error` inside the decoder (one image killed the run); a 300x1 image passed the build and was
refused by `preprocess_image`.
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys

import numpy as np
import PIL.Image
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "data_pipeline"))
import bad_examples  # noqa: E402
import build_config  # noqa: E402
import packed_data_util as u  # noqa: E402

from data_pipeline.build import run_build  # noqa: E402
from data_pipeline.records import ImageRef  # noqa: E402
from data_pipeline.validity import CONTROL_TOKENS  # noqa: E402
from octomed_jax.data import (  # noqa: E402
    ErrorBudget,
    Example,
    ExampleDecoder,
    Skipped,
    load_tokenizer,
    make_iterator,
    template,
)
from octomed_jax.data.images import ImageError, preprocess_image  # noqa: E402


def test_the_template_refuses_exactly_the_builds_control_tokens():
    assert template._control_strings(load_tokenizer()) == CONTROL_TOKENS


def test_preprocess_image_reads_a_malformed_exif_jpeg_upright():
    data = bad_examples.jpeg_with_bad_exif(bad_examples.pattern(28, 56))
    patches, grid = preprocess_image(data)
    with PIL.Image.open(io.BytesIO(data)) as im:
        upright = im.transpose(PIL.Image.Transpose.ROTATE_270)  # orientation 6, as exif_transpose would turn it
        want_patches, want_grid = preprocess_image(upright)
    assert grid.tolist() == want_grid.tolist() == [1, 6, 4]
    np.testing.assert_array_equal(patches, want_patches)


def test_preprocess_image_refuses_what_the_build_refuses_with_the_same_reason():
    with pytest.raises(ImageError) as e:
        preprocess_image(bad_examples.png(300, 1))
    assert e.value.reason == "bad_aspect_ratio"
    assert "image 300x1 (width x height) has aspect ratio 300 > 200" in str(e.value)
    with pytest.raises(ImageError) as e:
        preprocess_image(b"GIF89a truncated")
    assert e.value.reason == "corrupt_image"


def with_image(trace, data: bytes, fmt: str):
    question = dataclasses.replace(trace.question, images=(ImageRef(data=data, format=fmt),))
    return dataclasses.replace(trace, question=question)


def test_decoder_skips_bad_examples_of_old_shards_naming_source_and_index():
    decoder = ExampleDecoder("old", u.data_config("/unused"), u.MODEL_CFG)
    base = u.make_trace("old", 0, reasoning_words=5, images=1)
    exif = with_image(base, bad_examples.jpeg_with_bad_exif(bad_examples.pattern(28, 56)), "jpeg")
    assert isinstance(decoder(0, exif.to_bytes()), Example)
    thin = decoder(1, with_image(base, bad_examples.png(300, 1), "png").to_bytes())
    assert (thin.source, thin.index, thin.reason, thin.is_error) == ("old", 1, "bad_aspect_ratio", True)
    injected = dataclasses.replace(base, response=f"<think>\n{bad_examples.INJECTION}\n</think>\n\nThe answer is A.")
    out = decoder(2, injected.to_bytes())
    assert isinstance(out, Skipped) and (out.index, out.reason) == (2, "template_error")


def test_every_trace_the_build_accepts_is_trained_on(tmp_path):
    root, out = str(tmp_path / "sources"), str(tmp_path / "recipe")
    bad_examples.write_sources(root)
    config = build_config.get_config()
    config.recipe.source_root = root
    config.recipe.decontamination.enabled = False
    manifest = run_build(
        config, out_dir=out, progress=False, log=lambda s: None, teacher_factory=bad_examples.StubTeacher
    ).manifest
    kept = {s: sum(c["traces_kept"] for c in m["categories"].values()) for s, m in manifest["sources"].items()}
    assert kept == {"medqa": 8, "pmc_vqa": 8}
    cfg = u.data_config(
        out, sources={"medqa": 1.0, "pmc_vqa": 1.0}, epochs=1, batch_size=1, error_budget=ErrorBudget(max_errors=0)
    )
    it = make_iterator(cfg, u.MODEL_CFG, process_index=0, process_count=1)
    list(it)  # a zero error budget: any skipped record would stop here
    counts = it.counts()
    assert counts["records"] == 16 and counts["errors"] == {}
    assert counts["packing"]["examples"] == 16
