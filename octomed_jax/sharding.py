"""Meshes and logical sharding rules.

Model code names logical axes only (`batch`, `embed`, `mlp`, `heads`, `kv_heads`, `vocab`, `norm`,
`layers`, `patch`); the rules here, or the config's, map them to the mesh axes `data`, `fsdp` and
`tensor`. Changing a layout is a config change, never a model change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# FSDP over the embedding dimension, tensor parallelism over heads / MLP / vocabulary, batch over
# both data-parallel axes. Unlisted logical axes are replicated.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("patch", None),
    ("norm", None),
    ("layers", None),
)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `data`, `fsdp`, `tensor`; one size may be -1 (the rest of the devices).

    Axes are Auto: jit propagates shardings from the inputs and `out_shardings` (GSPMD).
    """
    devices = list(devices if devices is not None else jax.devices())
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh axes {sorted(unknown)} unknown; use {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(shape)}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into mesh {dict(shape)}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs {int(np.prod(sizes))} devices, "
                         f"{len(devices)} available")
    grid = np.asarray(devices).reshape(sizes)
    return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def parse_mesh(spec: str) -> Mesh | None:
    """`"data=2,tensor=4"` (a command-line flag) -> a mesh (one size may be -1); "" -> None (one device)."""
    if not spec:
        return None
    shape = {}
    for part in spec.split(","):
        name, sep, size = part.partition("=")
        if not sep or not size.strip().lstrip("-").isdigit():
            raise ValueError(f"mesh {spec!r}: expected axis=size pairs such as 'data=2,tensor=4'")
        shape[name.strip()] = int(size)
    return make_mesh(shape)


def logical_to_mesh(spec: Sequence[str | None] | None, rules: Rules) -> P:
    """A PartitionSpec over mesh axes for logical axis names; a mesh axis is used at most once."""
    return nn.logical_to_mesh_axes(tuple(spec or ()), rules)


def state_shardings(state: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for every variable of an NNX state, from its logical axis metadata."""
    specs = nnx.get_partition_spec(state)
    return jax.tree.map(
        lambda s: NamedSharding(mesh, logical_to_mesh(tuple(s), rules)),
        specs,
        is_leaf=lambda x: isinstance(x, P),
    )


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int, batch_axis: int = 0) -> NamedSharding:
    """Sharding of an array whose `batch_axis` is the batch and whose other axes are replicated."""
    spec = [None] * ndim
    spec[batch_axis] = "batch"
    return NamedSharding(mesh, logical_to_mesh(spec, rules))


def create_model(make_model: Any, mesh: Mesh, rules: Rules) -> Any:
    """Builds an NNX model with every parameter created directly in its shard (jit out_shardings)."""
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(make_model)
        graphdef, abstract_state = nnx.split(abstract)
        shardings = state_shardings(abstract_state, mesh, rules)

        @jax.jit
        def init() -> Any:
            return nnx.state(make_model())

        state = jax.jit(init, out_shardings=shardings)()
        return nnx.merge(graphdef, state)


def place_unsharded(module: Any, mesh: Mesh) -> None:
    """Replicates over `mesh` every array of `module` that sits on one device (e.g. optimizer step counts).

    Arrays created outside jit land on one device; the train step returns them replicated over the
    mesh, and that change of sharding would otherwise compile the step a second time.
    """
    state = nnx.state(module)
    replicated = NamedSharding(mesh, P())

    def place(x: Any) -> Any:
        if isinstance(x, jax.Array) and isinstance(x.sharding, jax.sharding.SingleDeviceSharding):
            return jax.device_put(x, replicated)
        return x

    nnx.update(module, jax.tree.map(place, state))
