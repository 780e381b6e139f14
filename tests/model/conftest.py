"""Tiny random transformers models of each family, the Qwen2.5-VL one saved to disk and our model loaded from it;
prompt, pixel, logits and greedy-generation helpers shared by tests/model and tests/generation."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from octomed_jax.hf import load_hf  # noqa: E402
from octomed_jax.models.config import ModelConfig, get_preset, to_hf_dict  # noqa: E402

IMAGE = 151655


HF_CLASSES = {"qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration"),
              "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration"),
              "internvl": ("InternVLConfig", "InternVLForConditionalGeneration")}


def hf_model(cfg: ModelConfig, seed: int = 0, scale: float | None = None):
    """A random transformers model of `cfg`'s family.

    `scale` None: norms and biases perturbed by 0.1 so that none is trivial; a number: every weight drawn
    at that scale (norm weights around 1), so that images move the logits well beyond the tolerances.
    """
    d = to_hf_dict(cfg)
    config_class, model_class = (getattr(transformers, name) for name in HF_CLASSES[cfg.family])
    hcfg = config_class(**{k: v for k, v in d.items() if k not in ("architectures", "model_type")})
    torch.manual_seed(seed)
    model = model_class(hcfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if scale is not None:
                p.copy_(torch.randn_like(p) * scale + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
            elif name.endswith("bias") or "norm" in name or "ln_q" in name:
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


def hf_generate(model, prompts, max_new_tokens: int, eos_token_id: int) -> list[list[int]]:
    """Greedy transformers `generate` on a left-padded batch of `Prompt`s (its own convention), new tokens only."""
    length = max(len(p.token_ids) for p in prompts)
    ids = np.zeros((len(prompts), length), np.int64)
    mask = np.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, length - len(p.token_ids) :] = p.token_ids
        mask[r, length - len(p.token_ids) :] = 1
    kwargs = {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.tensor(mask),
        "mm_token_type_ids": torch.tensor((ids == IMAGE).astype(np.int64)),
    }
    images = [p for p in prompts if p.image_grid_thw is not None]
    if images:
        kwargs["pixel_values"] = torch.tensor(np.concatenate([p.pixel_values for p in images]))
        kwargs["image_grid_thw"] = torch.tensor(np.concatenate([p.image_grid_thw for p in images]))
    with torch.no_grad():
        out = model.generate(**kwargs, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                             pad_token_id=0)
    return out[:, length:].numpy().tolist()


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
