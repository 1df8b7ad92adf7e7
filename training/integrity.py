"""What a checkpoint's arrays must be: finite before they are saved, and the same bits when
they are read back.

One jitted program per state structure inspects every leaf on device (in a few large
pieces, so the program stays small for hundreds of leaves) and returns, per leaf,
whether it is finite and a 64-bit digest of its bits (two 32-bit lanes). The host receives
a few bytes per leaf, never the arrays: the check is a reduction, cheap beside the save
itself, and it runs wherever the state lives (sharded over a mesh or on one device).

The digest of a leaf is two sums modulo 2**32 over its 32-bit words `word_i` at flat
position `i`: of `h_i = fmix32(word_i ^ (i * golden + seed))`, and of `h_i * odd_i`.
fmix32 (MurmurHash3's finaliser) is a bijection, so a change of any single word, one
flipped bit or many, changes its term and hence both sums: every one-word corruption is
caught, and position mixing catches swapped words. Integer sums do not depend on the
order of reduction, so the digest is the same on any mesh and any device count: a
checkpoint saved on 8 devices verifies on 1.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from training import sharding

# Recorded with every checkpoint's digests: a checkpoint whose digests were computed
# another way is restored unverified rather than reported as damaged.
VERSION = 1
_GOLDEN = np.uint32(0x9E3779B9)
_SEED = np.uint32(0x2545F491)


@dataclass(frozen=True)
class Inspection:
    """Per leaf of a state, in `jax.tree.leaves` order: its name, whether it is finite,
    and its digest (16 hex digits)."""

    names: tuple[str, ...]
    finite: tuple[bool, ...]
    digests: tuple[str, ...]

    def nonfinite(self) -> list[str]:
        """The names of the leaves holding a NaN or an infinity."""
        return [name for name, ok in zip(self.names, self.finite, strict=True) if not ok]

    def digest_map(self) -> dict[str, str]:
        """{leaf name: digest}, what a checkpoint records."""
        return dict(zip(self.names, self.digests, strict=True))


def _words(x: jax.Array) -> jax.Array:
    """The bits of `x` as uint32 words, one per element (or more for 64-bit types)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = x.dtype.itemsize
    if size >= 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    narrow = jnp.uint16 if size == 2 else jnp.uint8
    return jax.lax.bitcast_convert_type(x, narrow).astype(jnp.uint32)


def _fmix32(h: jax.Array) -> jax.Array:
    h = h ^ (h >> 16)
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _leaf_digest(x: jax.Array) -> jax.Array:
    """(2,) uint32: the leaf's digest lanes."""
    words = _words(x)
    # The flat position from per-axis iotas: a reshape to 1-D would force a sharded leaf
    # to be gathered; this stays elementwise and partitions like the leaf.
    position = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):
        iota = jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis)
        position = position + iota * np.uint32(stride % (1 << 32))
        stride *= words.shape[axis]
    salted = position * _GOLDEN
    mixed = _fmix32(words ^ (salted + _SEED))
    # The second lane weighs each term by an odd number (invertible modulo 2**32), so it
    # too changes whenever one word does, with other collisions than the plain sum's.
    return jnp.stack([jnp.sum(mixed, dtype=jnp.uint32),
                      jnp.sum(mixed * (salted | np.uint32(1)), dtype=jnp.uint32)])


def _leaf_finite(x: jax.Array) -> jax.Array:
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.all(jnp.isfinite(x))
    return jnp.asarray(True)


# Compiling one digest per leaf took 6-10 s at the first save of every run (digits_vp's
# state has 756 leaves), so leaves are inspected in a few large pieces instead:
# - unpartitioned leaves (one device, or replicated) are flattened and concatenated into
#   buckets of at most _BUCKET_BYTES, each digested at once with per-leaf segment sums;
# - partitioned leaves of one shape, dtype and sharding are stacked (vmapped), so a
#   sharded leaf is never gathered, up to _BUCKET_BYTES a stack.
# The digests are the per-leaf ones either way.
_BUCKET_BYTES = 1 << 26


def _nbytes(x) -> int:
    itemsize = getattr(x.dtype, "itemsize", 0) or 8  # a PRNG key: two 32-bit words
    return int(np.prod(x.shape, dtype=np.int64)) * max(itemsize, 4)


def _partitioned(x) -> bool:
    placed = getattr(x, "sharding", None)
    return placed is not None and not placed.is_fully_replicated


def _chunks(indices: list[int], nbytes: list[int]) -> list[tuple[int, ...]]:
    """Consecutive runs of `indices` of at most _BUCKET_BYTES (a larger leaf alone)."""
    chunks, current, size = [], [], 0
    for i in indices:
        if current and size + nbytes[i] > _BUCKET_BYTES:
            chunks.append(tuple(current))
            current, size = [], 0
        current.append(i)
        size += nbytes[i]
    return chunks + ([tuple(current)] if current else [])


def _plan(leaves: list) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """(buckets of unpartitioned leaves, stacks of partitioned leaves), as leaf indices."""
    nbytes = [_nbytes(leaf) for leaf in leaves]
    flat: list[int] = []
    kinds: dict[Any, list[int]] = {}
    for i, leaf in enumerate(leaves):
        if _partitioned(leaf):
            kinds.setdefault((leaf.shape, str(leaf.dtype), leaf.sharding), []).append(i)
        else:
            flat.append(i)
    stacks = [chunk for same in kinds.values() for chunk in _chunks(same, nbytes)]
    return tuple(_chunks(flat, nbytes)), tuple(stacks)


def _nonfinite_words(x: jax.Array, words: jax.Array) -> jax.Array:
    """Per word of `x` (`_words`' shape), whether its element is a NaN or an infinity."""
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros(words.shape, bool)
    bad = ~jnp.isfinite(x)
    return jnp.broadcast_to(bad.reshape(bad.shape + (1,) * (words.ndim - bad.ndim)),
                            words.shape)


def _bucket(leaves: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(finite (n,), lanes (n, 2)) of unpartitioned leaves, flattened into one array."""
    words = [_words(x) for x in leaves]
    flat = jnp.concatenate([w.reshape(-1) for w in words])
    bad = jnp.concatenate([_nonfinite_words(x, w).reshape(-1)
                           for x, w in zip(leaves, words, strict=True)])
    position = jnp.concatenate([jnp.arange(w.size, dtype=jnp.uint32) for w in words])
    segment = jnp.concatenate([jnp.full((w.size,), i, jnp.int32) for i, w in enumerate(words)])
    salted = position * _GOLDEN
    mixed = _fmix32(flat ^ (salted + _SEED))
    sums = [jax.ops.segment_sum(term, segment, num_segments=len(leaves),
                                indices_are_sorted=True)
            for term in (mixed, mixed * (salted | np.uint32(1)))]
    any_bad = jax.ops.segment_max(bad.astype(jnp.int32), segment, num_segments=len(leaves),
                                  indices_are_sorted=True)
    return any_bad <= 0, jnp.stack(sums, axis=1)


def _inspect_leaves(leaves: list[jax.Array], plan) -> tuple[jax.Array, jax.Array]:
    """(finite (n,), digest lanes (n, 2)) of the leaves, in the order of `plan`."""
    if not leaves:
        return jnp.zeros((0,), bool), jnp.zeros((0, 2), jnp.uint32)
    buckets, stacks = plan
    finite, lanes = [], []
    for bucket in buckets:
        bucket_finite, bucket_lanes = _bucket([leaves[i] for i in bucket])
        finite.append(bucket_finite)
        lanes.append(bucket_lanes)
    for group in stacks:
        stack = jnp.stack([leaves[i] for i in group])
        finite.append(jax.vmap(_leaf_finite)(stack))
        lanes.append(jax.vmap(_leaf_digest)(stack))
    return jnp.concatenate(finite), jnp.concatenate(lanes)


_plain = jax.jit(_inspect_leaves, static_argnums=1)
_on_mesh: dict[Any, Any] = {}  # mesh -> the program with replicated outputs on it


def _program(leaves: list):
    """The jitted inspection; on a mesh its two small outputs are replicated, so every
    process of a multi-host run can read them."""
    for leaf in leaves:
        placed = getattr(leaf, "sharding", None)
        if isinstance(placed, NamedSharding):
            mesh = placed.mesh
            if mesh not in _on_mesh:
                out = sharding.replicated(mesh)
                _on_mesh[mesh] = jax.jit(_inspect_leaves, static_argnums=1,
                                         out_shardings=(out, out))
            return _on_mesh[mesh]
    return _plain


def inspect(tree: Any) -> Inspection:
    """Finiteness and digest of every leaf of `tree` (arrays or numpy values)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    names = tuple(sharding.path_name(path) for path, _ in flat)
    leaves = [leaf if isinstance(leaf, jax.Array) else jnp.asarray(leaf) for _, leaf in flat]
    plan = _plan(leaves)
    finite, lanes = jax.device_get(_program(leaves)(leaves, plan))
    order = np.asarray([i for part in (*plan[0], *plan[1]) for i in part], dtype=np.int64)
    by_leaf_finite = np.empty(len(leaves), bool)
    by_leaf_finite[order] = np.asarray(finite)
    by_leaf_lanes = np.empty((len(leaves), 2), np.uint32)
    by_leaf_lanes[order] = np.asarray(lanes)
    digests = tuple(f"{int(a):08x}{int(b):08x}" for a, b in by_leaf_lanes)
    return Inspection(names, tuple(bool(f) for f in by_leaf_finite), digests)


def json_digest(value: Any) -> str:
    """The digest of a JSON-serialisable value (a data iterator's state), by its
    canonical form, so a re-serialised copy of the same value has the same digest."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def mismatched(saved: dict[str, str], restored: dict[str, str]) -> list[str]:
    """The leaves whose restored digest differs from the saved one (or that are missing
    on either side)."""
    names = sorted(set(saved) | set(restored))
    return [name for name in names if saved.get(name) != restored.get(name)]


def describe(names: list[str], limit: int = 3) -> str:
    """'a, b, c and 4 more': leaf names for a one-line message."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
