"""A tiny full-vocabulary checkpoint with the real tokenizer, a small benchmark folder, and a live server."""

import csv
import json

import pytest
from eval_helpers import png_bytes


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """An HF folder: the `tiny` preset (full vocabulary, real token ids), random weights, our tokenizer."""
    from octomed_jax.data.template import CHAT_TEMPLATE
    from octomed_jax.data.tokenizer import default_tokenizer_dir
    from octomed_jax.hf import save_hf
    from octomed_jax.models.config import get_preset
    from octomed_jax.models.qwen2_5_vl import init_model

    path = str(tmp_path_factory.mktemp("tiny_ckpt"))
    save_hf(
        init_model(get_preset("tiny"), seed=3), path, tokenizer_dir=default_tokenizer_dir(), chat_template=CHAT_TEMPLATE
    )
    return path


@pytest.fixture(scope="session")
def model(checkpoint):
    from octomed_jax.checkpoint import load_model

    return load_model(checkpoint)


@pytest.fixture(scope="session")
def tokenizer(checkpoint):
    from octomed_jax.checkpoint import load_contract
    from octomed_jax.data.tokenizer import load_tokenizer

    return load_tokenizer(load_contract(checkpoint).prompting.tokenizer_path)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """MedQA (text) and PMC-VQA (image) in their public formats, at the registry's default paths."""
    root = tmp_path_factory.mktemp("bench")
    (root / "medqa").mkdir()
    rows = [
        {
            "question": "A 45-year-old man has crushing chest pain. What is the first test?",
            "options": {"A": "ECG", "B": "MRI", "C": "Colonoscopy", "D": "EEG", "E": "Biopsy"},
            "answer": "ECG",
            "answer_idx": "A",
        },
        {
            "question": "Which vitamin deficiency causes scurvy?",
            "options": {"A": "Vitamin A", "B": "Vitamin C", "C": "Vitamin D", "D": "Vitamin K", "E": "Vitamin B12"},
            "answer": "Vitamin C",
            "answer_idx": "B",
        },
    ]
    (root / "medqa" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "pmc_vqa" / "images").mkdir(parents=True)
    with open(root / "pmc_vqa" / "test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"]
        )
        for i in range(2):
            (root / "pmc_vqa" / "images" / f"fig{i}.png").write_bytes(png_bytes(i))
            w.writerow([f"fig{i}.png", f"What modality is figure {i}?", "CT", "A:CT", "B:MRI", "C:X-ray", "D:PET", "A"])
    return str(root)


@pytest.fixture(scope="session")
def server(model, tokenizer):
    """A live server on a free loopback port: (base_url, server)."""
    from octomed_jax.generation.sampler import Sampler
    from octomed_jax.serving import ServeConfig, start_server

    cfg = ServeConfig(max_request_bytes=256 * 1024, max_image_pixels=16_000_000, batch_wait_s=0.2, default_max_tokens=8)
    with start_server(Sampler(model, max_batch=8), tokenizer, cfg) as srv:
        yield srv.url, srv
