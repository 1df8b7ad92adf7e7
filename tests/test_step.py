"""The loop's compiled train step: over the state's leaves, and compiled ahead on another
thread while the caller builds the state."""

import jax
import numpy as np
import pytest

from tests.configs import tiny
from training import loop, sharding
from training.checkpoint import abstract_with_shardings
from training.families import get_family
from training.step import LeafStep

ONE_DEVICE = jax.devices()[:1]


@pytest.fixture(scope="module")
def toy():
    """The toy MLP family on one device: its state's shardings and a sharded batch."""
    config = tiny.get_config("toy")
    family = get_family(config)
    mesh = sharding.make_mesh(config.sharding.mesh, ONE_DEVICE)
    abstract = jax.eval_shape(family.init_state, jax.random.PRNGKey(0))
    state_sh = loop.state_shardings(abstract, mesh, config.sharding.rules)
    batch_sh = sharding.batch_sharding(mesh)

    def batches(shape=(16, *family.data_shape)):
        rng = np.random.default_rng(0)
        while True:
            yield {"image": jax.device_put(rng.normal(size=shape).astype(np.float32), batch_sh),
                   "label": jax.device_put(np.zeros(shape[0], np.int32), batch_sh)}

    def new_step():
        return LeafStep(family.train_step, abstract, state_sh, batch_sh,
                        sharding.replicated(mesh))

    def initial_leaves():
        return LeafStep.leaves(sharding.place(family.init_state(jax.random.PRNGKey(0)),
                                              state_sh))

    placed = jax.tree.leaves(abstract_with_shardings(abstract, state_sh))
    return new_step, initial_leaves, placed, batches


def _train(step, leaves, batches, n=3):
    losses = []
    for _, batch in zip(range(n), batches, strict=False):
        leaves, metrics = step(leaves, batch)
        losses.append(float(metrics["loss"]))
    return leaves, losses


def test_a_step_compiled_ahead_trains_as_the_jitted_one_and_compiles_once(toy):
    new_step, initial_leaves, placed, batches = toy
    plain_leaves, plain_losses = _train(new_step(), initial_leaves(), batches())

    ahead = new_step()
    ahead_batches = batches()
    first = next(ahead_batches)
    ahead.compile_ahead(placed, first)  # from shapes and shardings alone
    leaves = initial_leaves()  # built while XLA compiles
    leaves, losses = _train(ahead, leaves, [first, *(next(ahead_batches) for _ in range(2))])

    assert losses == plain_losses
    for a, b in zip(leaves, plain_leaves, strict=True):
        np.testing.assert_array_equal(a, b)
    # The executable compiled ahead served every step: jit never compiled its own.
    assert ahead.jitted._cache_size() == 0


def test_a_batch_of_another_shape_is_refused_not_recompiled(toy):
    new_step, initial_leaves, placed, batches = toy
    step = new_step()
    first = next(batches())
    step.compile_ahead(placed, first)
    leaves, _ = step(initial_leaves(), first)
    with pytest.raises(TypeError, match=r"compiled with float32\[16,2\] and called with "
                                        r"float32\[8,2\]"):
        step(leaves, next(batches((8, first["image"].shape[1]))))


def test_a_failed_compile_is_raised_by_the_first_step(toy, monkeypatch):
    new_step, initial_leaves, placed, batches = toy

    def out_of_memory(self):
        raise RuntimeError("RESOURCE_EXHAUSTED: out of memory while compiling")

    monkeypatch.setattr(jax.stages.Lowered, "compile", out_of_memory)
    step = new_step()
    first = next(batches())
    step.compile_ahead(placed, first)  # lowering succeeds; the thread's compile fails
    with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
        step(initial_leaves(), first)
