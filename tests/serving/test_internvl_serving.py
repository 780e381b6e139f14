"""An InternVL export served: an image request is tiled by the run's preprocessing (its `max_tiles`, not the
processor's default) and answered as the sampler answers the prompt that evaluation builds."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

openai = pytest.importorskip("openai")


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_an_internvl_export_serves_images_with_the_runs_tiling(tmp_path):
    from octomed_jax.contract import Preprocessing, RunContract
    from octomed_jax.data.tokenizer import INTERNVL_SPECIAL_IDS
    from octomed_jax.generation.prompts import encode_prompt
    from octomed_jax.generation.sampler import Sampler, SamplingParams
    from octomed_jax.hf.export import export_for_serving
    from octomed_jax.models.config import get_preset
    from octomed_jax.models.families import init_model
    from octomed_jax.serving import load_for_serving, start_server

    model = init_model(get_preset("internvl_tiny"), seed=5)
    run = RunContract.for_model(model.cfg, preprocessing=Preprocessing(max_tiles=2), special_ids=INTERNVL_SPECIAL_IDS)
    export_for_serving(model, run, str(tmp_path / "hf"))
    served = load_for_serving(str(tmp_path / "hf"))
    assert served.contract.preprocessing.max_tiles == 2
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (90, 400, 3), dtype=np.uint8))  # wide
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which organ?"}]}]
    # What evaluation prompts: the run's own image options (2 tiles + thumbnail; the default 12 would cut 4 + 1).
    prompt = encode_prompt(served.tokenizer, messages, [image],
                           **served.contract.preprocessing.image_options(served.model.cfg))
    assert prompt.image_grid_thw[:, 0].tolist() == [3]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=4)
    want = Sampler(served.model, max_batch=1).generate([prompt], greedy)[0][0]

    request = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                            {"type": "text", "text": "Which organ?"}]}]
    with start_server(Sampler(served.model, max_batch=2), served.tokenizer,
                      served.serve_config(batch_wait_s=0.0)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model="m", messages=request, temperature=0, max_tokens=4)
    assert reply.usage.prompt_tokens == len(prompt.token_ids)
    assert reply.choices[0].message.content == served.tokenizer.decode(want.token_ids, skip_special_tokens=True)
    # The patch budget counts the tiles: 3 tiles of 6 x 6 patches.
    tiles_patches = int(np.prod(prompt.image_grid_thw))
    with start_server(Sampler(served.model, max_batch=2), served.tokenizer,
                      served.serve_config(batch_wait_s=0.0, max_batch_patches=tiles_patches - 1)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError, match=f"make {tiles_patches} patches once resized"):
            client.chat.completions.create(model="m", messages=request, max_tokens=4)
