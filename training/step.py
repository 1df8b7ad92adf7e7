"""The compiled train step, over the state's flat list of arrays.

A TrainState holds hundreds of `nnx.Variable`s; flattening and rebuilding them at every
call of a jitted step is host work on the critical path (12% of a digits step on a 2-core
CPU). The loop therefore keeps the state as its leaves and rebuilds the pytree only where it
reads it (evaluation, checkpoints, samples), which costs nothing between those points.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import NamedSharding

from training.state import TrainState


class LeafStep:
    """`train_step(state, batch) -> (state, metrics)` jitted as `(leaves, batch) -> (leaves,
    metrics)`, with the state's shardings, the batch's and replicated metrics; the state's
    leaves are donated. `compiler_options` go to XLA (`networks.layers.compiler_options`)."""

    def __init__(self, train_step: Callable[[TrainState, dict], tuple[TrainState, dict]],
                 state: Any, state_shardings: Any, batch_sharding: NamedSharding,
                 metrics_sharding: NamedSharding, compiler_options: dict | None = None):
        self._treedef = jax.tree.structure(state)

        def step_on_leaves(leaves, batch):
            new_state, metrics = train_step(self.state(leaves), batch)
            return jax.tree.leaves(new_state), metrics

        leaf_shardings = jax.tree.leaves(state_shardings)
        self.jitted = jax.jit(
            step_on_leaves,
            in_shardings=(leaf_shardings, batch_sharding),
            out_shardings=(leaf_shardings, metrics_sharding),
            donate_argnums=(0,),
            compiler_options=compiler_options,
        )

    def state(self, leaves: list[jax.Array]) -> TrainState:
        """The TrainState these leaves make up."""
        return jax.tree.unflatten(self._treedef, leaves)

    @staticmethod
    def leaves(state: TrainState) -> list[jax.Array]:
        return jax.tree.leaves(state)

    def __call__(self, leaves: list[jax.Array], batch: dict) -> tuple[list[jax.Array], dict]:
        return self.jitted(leaves, batch)
