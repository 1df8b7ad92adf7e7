"""Device mesh and shardings: data parallel over `data`, optional FSDP over `fsdp`.

Parameters follow big_vision-style regex rules matched against their path (e.g.
`params/down/0/conv/kernel`), first match wins. The batch is always split over every
device, so the global batch size is the config's whatever the device count.
"""

import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from errors import UserError
from training.state import TrainState

BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_config: Sequence[tuple[str, int]], devices=None) -> Mesh:
    """Builds a mesh from `(axis, size)` pairs; one size may be -1 (the devices left)."""
    devices = list(jax.devices() if devices is None else devices)
    names = tuple(name for name, _ in mesh_config)
    if names != BATCH_AXES:
        raise UserError(f"config.sharding.mesh must name the axes {BATCH_AXES}, got {names}")
    sizes = [int(size) for _, size in mesh_config]
    if sizes.count(-1) > 1:
        raise UserError("config.sharding.mesh: at most one axis size may be -1")
    if any(s < 1 and s != -1 for s in sizes):
        raise UserError(
            f"config.sharding.mesh {tuple(mesh_config)}: axis sizes must be >= 1 or -1"
        )
    known = int(np.prod([s for s in sizes if s != -1]))
    if known > len(devices):
        raise UserError(
            f"config.sharding.mesh {tuple(mesh_config)} needs {known} devices, "
            f"found {len(devices)}"
        )
    if len(devices) % known:
        raise UserError(
            f"config.sharding.mesh {tuple(mesh_config)} does not divide {len(devices)} devices"
        )
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if int(np.prod(sizes)) != len(devices):
        raise UserError(
            f"config.sharding.mesh {tuple(mesh_config)} needs {int(np.prod(sizes))} devices, "
            f"found {len(devices)}"
        )
    # Auto axes: XLA propagates shardings from the explicit in/out shardings we give jit.
    return jax.make_mesh(
        tuple(sizes), names, devices=devices, axis_types=(jax.sharding.AxisType.Auto,) * 2
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def check_batch_divisible(global_batch: int, mesh: Mesh) -> None:
    """The global batch is split evenly over every device of the mesh, or refused."""
    if global_batch % mesh.size:
        raise UserError(
            f"training.batch_size={global_batch} is not divisible by the {mesh.size} devices "
            f"of config.sharding.mesh ({mesh_description(mesh)})"
        )


def mesh_description(mesh: Mesh) -> str:
    """'data=2 x fsdp=4': the mesh's axes and sizes, for logs and messages."""
    return " x ".join(f"{name}={size}" for name, size in mesh.shape.items())


def bytes_per_device(tree) -> int:
    """Bytes of `tree`'s arrays that each device holds, from their shardings.

    Leaves are `jax.Array`s or `ShapeDtypeStruct`s with a sharding; a leaf without one
    (a NumPy array, say) counts in full. With the even shardings `tree_shardings` makes,
    every device holds the same amount, so one shard per leaf tells it all.
    """
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = tuple(getattr(leaf, "shape", ()))
        dtype = getattr(leaf, "dtype", None)
        if dtype is None:  # a Python scalar
            dtype = np.asarray(leaf).dtype
        leaf_sharding = getattr(leaf, "sharding", None)
        if leaf_sharding is not None:
            shape = leaf_sharding.shard_shape(shape)
        total += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return total


def path_name(path) -> str:
    """A pytree path as "params/conv/kernel" (what sharding rules and messages name)."""
    parts = []
    for key in path:
        name = getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))
        if name == "value":  # nnx.Variable's leaf attribute: not part of the user-facing name
            continue
        parts.append(str(name))
    return "/".join(parts)


def _fsdp_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
    """Shards the largest dimension the fsdp axis divides; replicates if none does."""
    if fsdp_size == 1:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def tree_shardings(tree, mesh: Mesh, rules: Sequence[tuple[str, str]]):
    """A NamedSharding per leaf of `tree` from the first regex rule matching its path."""
    compiled = [(re.compile(pattern), rule) for pattern, rule in rules]
    for _, rule in compiled:
        if rule not in ("replicate", "fsdp"):
            raise UserError(f"config.sharding.rules: unknown rule {rule!r} (replicate, fsdp)")

    def leaf_sharding(path, leaf):
        name = path_name(path)
        shape = tuple(getattr(leaf, "shape", ()))
        for pattern, rule in compiled:
            if pattern.search(name):
                if rule == "fsdp":
                    return NamedSharding(mesh, _fsdp_spec(shape, mesh.shape["fsdp"]))
                break
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(leaf_sharding, tree)


def place(tree, shardings):
    """`tree`'s values (host or device arrays, the same in every process) as global arrays
    laid out by `shardings` (a matching tree of NamedShardings).

    Each device receives only its own slice, so an FSDP-sharded state is never gathered
    whole on one device, and it works unchanged on many hosts.
    """

    def put(value, leaf_sharding):
        host = np.asarray(value)
        return jax.make_array_from_callback(host.shape, leaf_sharding, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)


def state_shardings(abstract_state: TrainState, mesh: Mesh, rules) -> TrainState:
    """Where a train state lives: replicated step and rng; parameters, optimizer state,
    EMA and aux by the sharding rules. Training, restoring and sampling all use it."""
    tree = lambda t: tree_shardings(t, mesh, rules)
    return TrainState(
        step=replicated(mesh),
        params=tree(abstract_state.params),
        opt_state=tree(abstract_state.opt_state),
        ema_params=tree(abstract_state.ema_params),
        rng=replicated(mesh),
        aux=tree(abstract_state.aux),
    )
