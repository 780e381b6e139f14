"""A tiny random transformers Qwen2.5-VL, saved to disk, and our model loaded from it."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from octomed_jax.hf import load_hf  # noqa: E402
from octomed_jax.models.config import ModelConfig, get_preset, to_hf_dict  # noqa: E402

IMAGE = 151655


def hf_model(cfg: ModelConfig, seed: int = 0):
    """A random transformers model of `cfg`, with norms and biases perturbed so that none is trivial."""
    d = to_hf_dict(cfg)
    hcfg = transformers.Qwen2_5_VLConfig(**{k: v for k, v in d.items() if k not in ("architectures", "model_type")})
    torch.manual_seed(seed)
    model = transformers.Qwen2_5_VLForConditionalGeneration(hcfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_q" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def image_prompt(grids, text_lens, start=100):
    """Token ids: text, then for each image <|vision_start|> pads <|vision_end|>, then more text."""
    rng = np.random.RandomState(start)
    ids = list(rng.randint(10, 1000, size=text_lens[0]))
    for grid, n_text in zip(grids, text_lens[1:], strict=True):
        ids += [151652] + [IMAGE] * (int(np.prod(grid)) // 4) + [151653]
        ids += list(rng.randint(10, 1000, size=n_text))
    return np.array(ids)


def pixels(grids, patch_dim, seed=0):
    n = int(sum(np.prod(g) for g in grids))
    return np.random.RandomState(seed).randn(n, patch_dim).astype(np.float32)


def hf_logits(model, ids, px=None, grids=None, attention_mask=None, position_ids=None):
    kwargs = {"input_ids": torch.tensor(ids), "mm_token_type_ids": torch.tensor((ids == IMAGE).astype(np.int64))}
    if px is not None:
        kwargs |= {"pixel_values": torch.tensor(px), "image_grid_thw": torch.tensor(np.asarray(grids))}
    if attention_mask is not None:
        kwargs["attention_mask"] = torch.tensor(attention_mask)
    if position_ids is not None:
        kwargs["position_ids"] = torch.tensor(position_ids, dtype=torch.long)
    with torch.no_grad():
        return model(**kwargs).logits.numpy()


@pytest.fixture(scope="session")
def tiny_cfg() -> ModelConfig:
    return get_preset("tiny_vocab")


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory, tiny_cfg):
    """(transformers model, folder it was saved to)."""
    model = hf_model(tiny_cfg)
    path = tmp_path_factory.mktemp("hf_tiny")
    model.save_pretrained(path)
    return model, str(path)


@pytest.fixture(scope="session")
def ours(hf_checkpoint):
    return load_hf(hf_checkpoint[1])
