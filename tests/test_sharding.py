"""Mesh and sharding rules."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from errors import UserError
from training import sharding


def test_mesh_fills_the_minus_one_axis_with_the_devices_left():
    mesh = sharding.make_mesh((("data", -1), ("fsdp", 2)))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2}


def test_mesh_that_does_not_fit_the_devices_is_a_clear_error():
    with pytest.raises(UserError, match="does not divide 8 devices"):
        sharding.make_mesh((("data", -1), ("fsdp", 3)))
    with pytest.raises(UserError, match="must name the axes"):
        sharding.make_mesh((("batch", -1), ("fsdp", 1)))


def test_batch_is_split_over_every_device():
    mesh = sharding.make_mesh((("data", 4), ("fsdp", 2)))
    x = jax.device_put(jnp.zeros((16, 3)), sharding.batch_sharding(mesh))
    assert {s.data.shape for s in x.addressable_shards} == {(2, 3)}
    with pytest.raises(UserError, match="batch_size=12 is not divisible by the 8 devices"):
        sharding.check_batch_divisible(12, mesh)


def test_fsdp_rule_shards_the_largest_divisible_dimension_and_replicates_the_rest():
    mesh = sharding.make_mesh((("data", 4), ("fsdp", 2)))
    tree = {
        "conv": {"kernel": jnp.zeros((3, 3, 8, 16)), "bias": jnp.zeros((3,))},
        "dense": {"kernel": jnp.zeros((5, 4))},
    }
    rules = ((r"dense/", "replicate"), (".*", "fsdp"))
    specs = jax.tree.map(lambda s: s.spec, sharding.tree_shardings(tree, mesh, rules))
    assert specs["conv"]["kernel"] == P(None, None, None, "fsdp")
    assert specs["conv"]["bias"] == P()  # 3 is not divisible by 2
    assert specs["dense"]["kernel"] == P()


def test_unknown_rule_is_rejected():
    mesh = sharding.make_mesh((("data", -1), ("fsdp", 1)))
    with pytest.raises(UserError, match="unknown rule 'shard'"):
        sharding.tree_shardings({"a": jnp.zeros(2)}, mesh, ((".*", "shard"),))


def test_mesh_larger_than_the_devices_names_the_setting_and_both_counts():
    with pytest.raises(UserError, match=r"^config.sharding.mesh \(\('data', 4\), "
                                        r"\('fsdp', 4\)\) needs 16 devices, found 8$"):
        sharding.make_mesh((("data", 4), ("fsdp", 4)))
    with pytest.raises(UserError, match=r"needs 2 devices, found 1$"):
        sharding.make_mesh((("data", -1), ("fsdp", 2)), jax.devices()[:1])
    with pytest.raises(UserError, match=r"axis sizes must be >= 1 or -1$"):
        sharding.make_mesh((("data", 0), ("fsdp", 1)))


def test_bytes_per_device_counts_one_device_share_of_each_leaf():
    mesh = sharding.make_mesh((("data", 2), ("fsdp", 4)))
    split = jax.sharding.NamedSharding(mesh, P(None, "fsdp"))
    tree = {
        "w": jax.device_put(jnp.zeros((8, 16), jnp.float32), split),  # 8 x 4 per device
        "b": jax.device_put(jnp.zeros((3,), jnp.bfloat16), sharding.replicated(mesh)),
        "step": jnp.zeros((), jnp.int32),  # one device, whole
    }
    expected = 8 * 4 * 4 + 3 * 2 + 4
    assert sharding.bytes_per_device(tree) == expected
    assert sharding.bytes_per_device(jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree
    )) == expected
    assert sharding.mesh_description(mesh) == "data=2 x fsdp=4"
