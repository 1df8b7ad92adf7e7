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

import threading
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

        self._compiled: Callable | None = None
        self._compiling: threading.Thread | None = None
        self._compile_result: dict[str, Any] = {}

    def compile_ahead(self, abstract_leaves: list[jax.ShapeDtypeStruct], batch: dict) -> None:
        """Traces and lowers the step for these leaves (shapes, dtypes and shardings; no
        values needed) and this batch, then compiles it on a background thread. The first
        call waits for it; every later batch must have the first one's shapes, as the
        training pipeline's (fixed-size, sharded) batches do."""
        lowered = self.jitted.lower(abstract_leaves, batch)

        def compile_lowered() -> None:
            try:
                self._compile_result["compiled"] = lowered.compile()
            except Exception as error:  # re-raised by the first step, on the caller's thread
                self._compile_result["error"] = error

        # Not a daemon: a run that fails meanwhile exits after XLA has finished, never with
        # a compile under way while the interpreter tears the backend down.
        self._compiling = threading.Thread(target=compile_lowered, name="compile-train-step")
        self._compiling.start()

    def wait_compiled(self) -> None:
        """Waits for `compile_ahead`'s compile, raising its error if it failed."""
        if self._compiling is None:
            return
        self._compiling.join()
        self._compiling = None
        if "error" in self._compile_result:
            raise self._compile_result.pop("error")
        self._compiled = self._compile_result.pop("compiled")

    def state(self, leaves: list[jax.Array]) -> TrainState:
        """The TrainState these leaves make up."""
        return jax.tree.unflatten(self._treedef, leaves)

    @staticmethod
    def leaves(state: TrainState) -> list[jax.Array]:
        return jax.tree.leaves(state)

    def __call__(self, leaves: list[jax.Array], batch: dict) -> tuple[list[jax.Array], dict]:
        if self._compiling is not None:
            self.wait_compiled()
        if self._compiled is not None:
            return self._compiled(leaves, batch)
        return self.jitted(leaves, batch)
