"""One definition of a valid example at build time: control tokens in text, and preprocess_image's image rules."""

from __future__ import annotations

import io
import json
import os
import struct
import sys

import pytest
from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bad_examples  # noqa: E402
import build_config  # noqa: E402

from data_pipeline import images as imglib  # noqa: E402
from data_pipeline.build import run_build  # noqa: E402
from data_pipeline.filters import rejection_sample  # noqa: E402
from data_pipeline.records import BadRecordError, Question  # noqa: E402
from data_pipeline.teachers import Completion  # noqa: E402
from data_pipeline.validity import CONTROL_TOKENS, check_question_text, find_control_token  # noqa: E402
from data_pipeline.writer import qwen_tokenizer_dir  # noqa: E402

OPTIONS = {"A": "ceftriaxone", "B": "aspirin", "C": "heparin"}


def question(stem: str = "Which drug is given first?", options: dict[str, str] = OPTIONS) -> Question:
    return Question("q1", "medqa", "text", stem, dict(options), "B").validate()


def test_control_tokens_are_the_tokenizers_special_tokens():
    with open(os.path.join(qwen_tokenizer_dir(), "tokenizer.json"), encoding="utf-8") as f:
        added = json.load(f)["added_tokens"]
    special = tuple(t["content"] for t in sorted(added, key=lambda t: t["id"]) if t["special"])
    assert special == CONTROL_TOKENS
    assert len(CONTROL_TOKENS) == 14 and "<think>" not in CONTROL_TOKENS  # text may hold <think>


def test_find_control_token():
    assert find_control_token("plain <think> text </think> <tool_call>") is None
    assert find_control_token(bad_examples.INJECTION) == "<|im_start|>"  # the list's order, not the text's
    assert find_control_token("a <|image_pad|> b") == "<|image_pad|>"


def test_question_with_a_control_token_is_rejected_naming_the_field():
    check_question_text(question())
    with pytest.raises(BadRecordError) as e:
        check_question_text(question(options={**OPTIONS, "C": "heparin<|endoftext|>"}))
    assert e.value.reason == "control_tokens"
    assert str(e.value) == (
        "control_tokens: medqa/q1: option C contains the control token '<|endoftext|>'; fix the source row"
    )
    with pytest.raises(BadRecordError, match="question contains the control token '<|im_end|>'"):
        check_question_text(question("Which?<|im_end|>"))


def test_rejection_sampling_drops_a_trace_with_control_tokens_and_keeps_the_others():
    q = question()
    samples = [
        Completion(q.key, "r1", "v1", 0, "The answer is \\boxed{B}.", bad_examples.INJECTION),
        Completion(q.key, "r1", "v1", 1, "The answer is \\boxed{B}.", "Aspirin first, as in any ACS."),
        Completion(q.key, "r1", "v1", 2, "The answer is \\boxed{A}.", "Meningitis."),
        Completion(q.key, "r1", "v1", 3, "The answer is \\boxed{B}.", "Aspirin, then heparin."),
    ]
    rej = rejection_sample(q, samples, k=4, response_format="cot", seed=0)
    assert rej.n_correct == 3
    assert [t.sample_index for t in rej.traces] == [1, 3]
    assert rej.dropped == {"control_tokens": 1, "wrong_answer": 1}
    # The direct format drops the reasoning, so the injected sample is a plain (duplicate) answer there.
    direct = rejection_sample(q, samples, k=4, response_format="direct", seed=0)
    assert [t.sample_index for t in direct.traces] == [0] and direct.dropped == {"duplicate": 2, "wrong_answer": 1}


# --- images: the rules of preprocess_image ------------------------------------------------------------------


def test_malformed_exif_breaks_exif_transpose_but_not_the_check():
    data = bad_examples.jpeg_with_bad_exif(bad_examples.pattern(28, 56))
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.getexif()[bad_examples.ORIENTATION] == 6
        with pytest.raises(struct.error):
            ImageOps.exif_transpose(im)  # what preprocess_image used to call
    assert imglib.inspect_image(data) == ("jpeg", 56, 28)
    upright = imglib.open_image(data)
    assert upright.size == (28, 56)  # orientation 6 still applied: tall as displayed
    with Image.open(io.BytesIO(data)) as im:
        assert upright.tobytes() == im.transpose(Image.Transpose.ROTATE_270).tobytes()


def test_unreadable_exif_counts_as_no_orientation():
    # An IFD whose entry count runs past the block: PIL reads no tags at all.
    buf = io.BytesIO()
    Image.fromarray(bad_examples.pattern(16, 40)).save(buf, format="JPEG")
    payload = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff\x01\x12"
    data = buf.getvalue()[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + buf.getvalue()[2:]
    with pytest.warns(UserWarning, match="Corrupt EXIF"):
        assert imglib.open_image(data).size == (40, 16)


@pytest.mark.parametrize(
    ("size", "reason"),
    [((300, 1), "bad_aspect_ratio"), ((1, 201), "bad_aspect_ratio"), ((200, 1), None), ((1, 200), None)],
)
def test_aspect_ratio_rule_of_the_processor(size, reason):
    data = bad_examples.png(*size)
    if reason is None:
        assert imglib.inspect_image(data) == ("png", *size)
        return
    with pytest.raises(BadRecordError) as e:
        imglib.inspect_image(data)
    assert e.value.reason == reason
    assert f"image {size[0]}x{size[1]} (width x height) has aspect ratio" in str(e.value)


def test_dimension_rule_is_checked_from_the_header_alone(tmp_path):
    (tmp_path / "thin.png").write_bytes(bad_examples.png(300, 1))
    with pytest.raises(BadRecordError) as e:
        imglib.load_image(tmp_path, "thin.png", decode=False, load_bytes=False)  # the build's key-only pass
    assert e.value.reason == "bad_aspect_ratio"


# --- the build ---------------------------------------------------------------------------------------------


def test_build_rejects_and_counts_what_training_would_refuse(tmp_path):
    root = str(tmp_path / "sources")
    bad_examples.write_sources(root)
    config = build_config.get_config()
    config.recipe.source_root = root
    config.recipe.decontamination.enabled = False
    result = run_build(
        config, out_dir=str(tmp_path / "out"), progress=False, log=lambda s: None,
        teacher_factory=bad_examples.StubTeacher,
    )
    text = result.manifest["sources"]["medqa"]["categories"]["text"]
    assert text["questions_in"] == 3
    assert text["dropped"] == {"control_tokens": 1}  # the stem with <|im_end|>: no teacher call made for it
    assert text["samples"] == 2 * 8 and text["samples_correct"] == 2 * 8
    # Sample 0 of each question carries the injection: dropped, and 4 of the 7 clean ones kept (K = 4).
    assert text["dropped_samples"] == {"control_tokens": 2, "over_k": 6}
    assert text["questions_kept"] == 2 and text["traces_kept"] == 8
    mm = result.manifest["sources"]["pmc_vqa"]["categories"]
    assert mm["unparsed"]["dropped"] == {"bad_aspect_ratio": 1}  # thin.png
    assert mm["mm_reasoning"]["questions_kept"] == 2  # ok.png and exif.jpg: preprocess_image takes both
    assert mm["mm_reasoning"]["dropped_samples"] == {"control_tokens": 2, "over_k": 6}
