"""Training metrics: console progress bar, TensorBoard event files and a JSONL log; FLOPs and MFU.

Only process 0 writes. The JSONL log is appended to, so a resumed run continues the same file.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax

from octomed_jax.models.config import ModelConfig

# Dense bf16 peak FLOP/s per device, by `device_kind` substring (vendor data sheets).
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v6": 918e12,
    "TPU v5p": 459e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v4": 275e12,
}


def device_peak_flops(device: jax.Device | None = None) -> float | None:
    """bf16 peak FLOP/s of one device, or None when unknown (CPU)."""
    kind = (device or jax.devices()[0]).device_kind
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return flops
    return None


def text_params(cfg: ModelConfig) -> int:
    """Language-model parameters that take part in every token's matmuls (no embedding lookup)."""
    t = cfg.text
    attn = t.hidden_size * t.head_dim * (2 * t.num_attention_heads + 2 * t.num_key_value_heads)
    mlp = 3 * t.hidden_size * t.intermediate_size
    return t.num_hidden_layers * (attn + mlp) + t.hidden_size * t.vocab_size


def vision_params(cfg: ModelConfig) -> int:
    v = cfg.vision
    block = 4 * v.hidden_size**2 + 3 * v.hidden_size * v.intermediate_size
    merger = (v.hidden_size * v.merge_unit) ** 2 + v.hidden_size * v.merge_unit * v.out_hidden_size
    return v.patch_dim * v.hidden_size + v.depth * block + merger // v.merge_unit


def train_flops(cfg: ModelConfig, tokens: float, patches: float, seq_len: int) -> float:
    """Model FLOPs of one training step: 6 N per token/patch plus causal attention (12 L d s / 2)."""
    t = cfg.text
    attention = 6 * t.num_hidden_layers * t.hidden_size * seq_len  # per token: 12 L d s, halved for causality
    return 6 * text_params(cfg) * tokens + attention * tokens + 6 * vision_params(cfg) * patches


class MetricsWriter:
    """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard `<workdir>/tensorboard/`."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled and jax.process_index() == 0
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:  # TensorBoard files are optional; the JSONL log is not
                self._tb = None

    def write(self, step: int, scalars: dict[str, Any], prefix: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": prefix, **{k: _plain(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in scalars.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{prefix}/{k}", v, step)
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()


def _plain(v: Any) -> Any:
    try:
        return float(v) if not isinstance(v, (str, int, dict, list)) else v
    except (TypeError, ValueError):
        return str(v)
