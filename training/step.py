"""The compiled train step, over the state's flat list of arrays.

A TrainState holds hundreds of `nnx.Variable`s; flattening and rebuilding them at every
call of a jitted step is host work on the critical path (12% of a digits step on a 2-core
CPU). The loop therefore keeps the state as its leaves and rebuilds the pytree only where it
reads it (evaluation, checkpoints, samples), which costs nothing between those points.

A fresh run also compiles the step while it builds its initial state (`compile_ahead`):
XLA's compile releases the GIL and takes one core, the eager initialisers the other, so
the state's seconds leave the cold start (CIFAR-10 DDPM++ on 2 cores: 4-5 s of about 55).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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

        self._compiled: Callable | None = None
        self._pending: Future | None = None

    def compile_ahead(self, abstract_leaves: list[jax.ShapeDtypeStruct], batch: dict) -> None:
        """Traces and lowers the step for these leaves (shapes, dtypes and shardings; no
        values needed) and this batch, then compiles it on a background thread. The first
        call waits for it; every later batch must have the first one's shapes, as the
        training pipeline's (fixed-size, sharded) batches do."""
        lowered = self.jitted.lower(abstract_leaves, batch)
        # The executor's thread is joined at exit: a run that fails meanwhile exits after
        # XLA has finished, never with a compile under way while the backend is torn down.
        executor = ThreadPoolExecutor(1, thread_name_prefix="compile-train-step")
        self._pending = executor.submit(lowered.compile)
        executor.shutdown(wait=False)  # its thread ends with the compile

    def wait_compiled(self) -> None:
        """Waits for `compile_ahead`'s compile, raising its error if it failed."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._compiled = pending.result()

    def state(self, leaves: list[jax.Array]) -> TrainState:
        """The TrainState these leaves make up."""
        return jax.tree.unflatten(self._treedef, leaves)

    @staticmethod
    def leaves(state: TrainState) -> list[jax.Array]:
        return jax.tree.leaves(state)

    def __call__(self, leaves: list[jax.Array], batch: dict) -> tuple[list[jax.Array], dict]:
        self.wait_compiled()
        if self._compiled is not None:
            return self._compiled(leaves, batch)
        return self.jitted(leaves, batch)
