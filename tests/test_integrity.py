"""Digests and the finiteness check of a state: one flipped bit anywhere changes the digest,
the digest does not depend on the mesh, and non-finite leaves are named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from training import integrity, sharding


def _tree():
    rng = np.random.default_rng(0)
    return {"params": {"w": jnp.asarray(rng.normal(size=(8, 6)).astype(np.float32)),
                       "b": jnp.asarray(rng.normal(size=(6,)).astype(np.float16))},
            "step": jnp.asarray(3, jnp.int32), "rng": jax.random.PRNGKey(1),
            "flag": jnp.asarray([True, False])}


def _flip_bit(x: np.ndarray, index: int, bit: int) -> np.ndarray:
    raw = np.array(x).reshape(-1).view(np.uint8).copy()
    raw[index] ^= np.uint8(1 << bit)
    return raw.view(x.dtype).reshape(x.shape)


@pytest.mark.parametrize("index, bit", [(0, 0), (17, 3), (191, 7)])
def test_one_flipped_bit_changes_the_digest_of_that_leaf_only(index, bit):
    tree = _tree()
    before = integrity.inspect(tree)
    damaged = dict(tree, params=dict(tree["params"]))
    damaged["params"]["w"] = jnp.asarray(_flip_bit(np.asarray(tree["params"]["w"]), index, bit))
    after = integrity.inspect(damaged)
    assert integrity.mismatched(before.digest_map(), after.digest_map()) == ["params/w"]


def test_swapped_elements_change_the_digest():
    x = jnp.arange(12.0).reshape(3, 4)
    swapped = x.at[0, 0].set(1.0).at[0, 1].set(0.0)
    assert integrity.inspect(x).digests != integrity.inspect(swapped).digests


def test_the_digest_is_the_same_on_one_device_and_sharded_over_eight():
    tree = _tree()
    mesh = sharding.make_mesh([("data", -1), ("fsdp", 1)])
    spread = jax.device_put(tree["params"]["w"], jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec("data")))
    assert len(spread.sharding.device_set) == 8
    assert integrity.inspect(spread).digests == integrity.inspect(
        jax.device_get(tree["params"]["w"])).digests


def _many_leaves(mesh=None):
    """A state-like tree: repeated shapes, mixed dtypes, a key, an empty leaf, and (with a
    mesh) leaves sharded over it."""
    rng = np.random.default_rng(1)
    tree = dict(_tree(), empty=jnp.zeros((0, 3)), wide=jnp.arange(40.0).reshape(5, 8))
    tree["copies"] = [jnp.asarray(rng.normal(size=(4, 6)).astype(np.float32)) for _ in range(5)]
    if mesh is not None:
        spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        tree["sharded"] = [jax.device_put(jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
                                          spec) for _ in range(3)]
    return tree


@pytest.mark.parametrize("bucket_bytes", [1 << 26, 64])
def test_digests_of_a_whole_state_are_those_of_each_leaf_alone(monkeypatch, bucket_bytes):
    """However the leaves are pieced together (flattened buckets for unpartitioned leaves,
    stacks for sharded ones, split when large), each leaf's digest is its own."""
    monkeypatch.setattr(integrity, "_BUCKET_BYTES", bucket_bytes)
    tree = _many_leaves(sharding.make_mesh([("data", -1), ("fsdp", 1)]))
    whole = integrity.inspect(tree)
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    alone = [integrity.inspect(jax.device_get(leaf)).digests[0] for _, leaf in flat]
    assert list(whole.digests) == alone
    assert whole.nonfinite() == []


def test_a_nan_in_one_of_several_leaves_of_a_shape_names_that_leaf_only():
    mesh = sharding.make_mesh([("data", -1), ("fsdp", 1)])
    tree = _many_leaves(mesh)
    tree["copies"][3] = tree["copies"][3].at[1, 2].set(jnp.nan)
    tree["sharded"][1] = tree["sharded"][1].at[7, 0].set(-jnp.inf)
    assert integrity.inspect(tree).nonfinite() == ["copies/3", "sharded/1"]


def test_non_finite_leaves_are_named_and_integer_leaves_are_finite():
    tree = _tree()
    tree["params"]["w"] = tree["params"]["w"].at[2, 3].set(jnp.inf)
    tree["opt"] = jnp.asarray([0.0, jnp.nan])
    found = integrity.inspect(tree)
    assert found.nonfinite() == ["opt", "params/w"]
    assert integrity.describe(["a", "b", "c", "d", "e"]) == "a, b, c and 2 more"


def test_json_digest_ignores_key_order_but_not_values():
    assert integrity.json_digest({"a": 1, "b": [2]}) == integrity.json_digest({"b": [2], "a": 1})
    assert integrity.json_digest({"a": 1}) != integrity.json_digest({"a": 2})
