"""Sampling from the student: the batched, cached, compiled sampler and prompt encoding."""

from octomed_jax.generation.prompts import encode_prompt, question_prompt
from octomed_jax.generation.sampler import (
    DEFAULT_STOP_IDS,
    Completion,
    Prompt,
    Sampler,
    SamplingParams,
    bucket,
    sample_tokens,
)

__all__ = [
    "DEFAULT_STOP_IDS",
    "Completion",
    "Prompt",
    "Sampler",
    "SamplingParams",
    "bucket",
    "encode_prompt",
    "question_prompt",
    "sample_tokens",
]
