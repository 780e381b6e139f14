"""The serving library without HTTP: the configured system prompt and pixel budget reach the prompt, the loader
returns what the server runs, and the serve CLI defines its flags only when asked."""

import json

import numpy as np
import pytest
from eval_helpers import data_url, png_bytes

from octomed_jax.contract import Preprocessing, Prompting, RunContract
from octomed_jax.data.images import preprocess_image
from octomed_jax.data.template import encode_chat
from octomed_jax.models.config import get_preset
from octomed_jax.serving import ServeConfig, ServingModel, load_for_serving, parse_request

RADIOLOGIST = "You are a careful radiologist."


def request(*messages):
    return json.dumps({"messages": list(messages)}).encode()


def template_ids(tokenizer, messages):
    return encode_chat(tokenizer, messages, image_grids=(), add_generation_prompt=True).token_ids


def test_system_prompt_is_added_only_when_the_request_has_none(tokenizer):
    user = {"role": "user", "content": "Which organ is shown?"}
    cfg = ServeConfig(system_prompt=RADIOLOGIST)
    prompt, _ = parse_request(request(user), cfg, tokenizer)
    expected = template_ids(tokenizer, [{"role": "system", "content": RADIOLOGIST}, user])
    np.testing.assert_array_equal(prompt.token_ids, expected)
    # Without one configured, the template's own default system prompt stays (a different prompt).
    default, _ = parse_request(request(user), ServeConfig(), tokenizer)
    np.testing.assert_array_equal(default.token_ids, template_ids(tokenizer, [user]))
    assert RADIOLOGIST not in tokenizer.decode(default.token_ids) and RADIOLOGIST in tokenizer.decode(prompt.token_ids)
    # A request's own system message wins ("developer" is OpenAI's newer name for it).
    own = {"role": "developer", "content": "Answer in one word."}
    prompt, _ = parse_request(request(own, user), cfg, tokenizer)
    np.testing.assert_array_equal(prompt.token_ids, template_ids(tokenizer, [{**own, "role": "system"}, user]))


def test_a_qwen3_vl_run_is_served_with_its_own_template(tokenizer):
    """A client's request to a Qwen3-VL run is prompted as Qwen3-VL-Instruct's template does (no default system
    turn), its system message kept: the serve config takes the template from the run's contract."""
    from octomed_jax.data.template import QWEN3_VL_CHAT_TEMPLATE

    contract = RunContract.for_model(get_preset("qwen3_vl_tiny"))
    cfg = ServingModel(model=None, tokenizer=tokenizer, contract=contract).serve_config(max_batch=3)
    assert cfg.template == "qwen3_vl"
    user = {"role": "user", "content": "Which organ is shown?"}
    for messages in ([user], [{"role": "system", "content": RADIOLOGIST}, user]):
        prompt, _ = parse_request(request(*messages), cfg, tokenizer)
        want = tokenizer.apply_chat_template(messages, chat_template=QWEN3_VL_CHAT_TEMPLATE,
                                             add_generation_prompt=True, tokenize=True)
        want = want["input_ids"] if hasattr(want, "keys") else want
        np.testing.assert_array_equal(prompt.token_ids, want)
    bare, _ = parse_request(request(user), cfg, tokenizer)
    assert tokenizer.decode(bare.token_ids).startswith("<|im_start|>user\n")


@pytest.mark.parametrize("max_pixels", [28 * 28 * 4, 28 * 28 * 16])
def test_images_are_resized_to_the_configured_pixel_budget(tokenizer, max_pixels):
    png = png_bytes(5, size=(120, 168))
    user = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(png)}},
                                        {"type": "text", "text": "Modality?"}]}
    prompt, _ = parse_request(request(user), ServeConfig(max_pixels=max_pixels), tokenizer)
    patches, grid = preprocess_image(png, max_pixels=max_pixels)
    np.testing.assert_array_equal(prompt.image_grid_thw, grid[None])
    np.testing.assert_array_equal(prompt.pixel_values, patches)


def test_load_for_serving_returns_the_checkpoint_model_and_tokenizer(checkpoint, model, tokenizer):
    loaded = load_for_serving(checkpoint)
    assert loaded.model.cfg == model.cfg
    assert loaded.tokenizer.get_vocab() == tokenizer.get_vocab()
    # An HF folder we did not export has no run contract: the template's default prompt and OctoMed's pixels.
    cfg = loaded.serve_config(max_batch=3)
    assert (cfg.system_prompt, cfg.max_pixels, cfg.stop_ids, cfg.max_batch) == (None, 262_144, (151645, 151643), 3)


def test_serve_cli_defines_flags_only_when_asked():
    from absl import flags

    from octomed_jax import serve

    assert "checkpoint" not in flags.FLAGS  # importing the CLI defined nothing
    fv = flags.FlagValues()
    serve.define_flags(fv)
    fv(["serve", "--checkpoint=ckpt", "--batch_wait_ms=250", "--max_request_mb=2"])
    contract = RunContract.for_model(get_preset("tiny"), prompting=Prompting(system_prompt=RADIOLOGIST),
                                     preprocessing=Preprocessing(max_pixels=3136))
    cfg = serve.serve_config(fv, ServingModel(model=None, tokenizer=None, contract=contract))
    # The run's prompting and preprocessing come from its contract, the limits from the flags.
    assert (cfg.system_prompt, cfg.max_pixels, cfg.batch_wait_s, cfg.max_request_bytes) == (
        RADIOLOGIST, 3136, 0.25, 2 * 2**20)
