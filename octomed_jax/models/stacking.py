"""Layers stored stacked (a leading `layers` axis) and run with `nnx.scan`, unrolled or rematerialised.

Stacking keeps one set of parameter shapes whatever the depth, so a 28-layer step compiles one layer;
`scan_layers=False` unrolls the same loop (faster on small models, slower to compile on big ones).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from octomed_jax.models.config import ModelConfig

LAYERS_AXIS = "layers"


def stack(make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int, rngs: nnx.Rngs) -> nnx.Module:
    """Creates `num_layers` independent layers whose parameters share a leading `layers` axis."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYERS_AXIS})
    def create(rngs: nnx.Rngs) -> nnx.Module:
        return make_layer(rngs)

    return create(rngs)


def remat_policy(name: str) -> Callable[..., bool] | None:
    """A `jax.checkpoint_policies` policy by name; "full" saves nothing but the layer inputs."""
    if name == "full":
        return None
    policy = getattr(jax.checkpoint_policies, name, None)
    if policy is None:
        raise ValueError(f"unknown remat_policy {name!r}: use 'none', 'full' or a jax.checkpoint_policies name")
    return policy


def run(
    layers: nnx.Module,
    body: Callable[[nnx.Module, Any, Any], Any],
    carry: Any,
    xs: Any,
    cfg: ModelConfig,
) -> Any:
    """Runs `carry = body(layer, carry, x)` over the stacked layers and the per-layer inputs `xs`."""

    def step(layer: nnx.Module, carry: Any, x: Any) -> Any:
        return body(layer, carry, x)

    if cfg.remat_policy != "none":
        step = nnx.remat(step, policy=remat_policy(cfg.remat_policy), prevent_cse=not cfg.scan_layers)
    scanned = nnx.scan(
        step,
        in_axes=(0, nnx.Carry, 0),
        out_axes=nnx.Carry,
        unroll=not cfg.scan_layers,
        transform_metadata={nnx.PARTITION_NAME: LAYERS_AXIS},
    )
    return scanned(layers, carry, xs)
