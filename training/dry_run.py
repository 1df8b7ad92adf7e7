"""`train.py --dry_run`: what a run would hold and compile, without training.

Builds the family and the train state abstractly (`jax.eval_shape`: no parameter is
allocated), places it on the config's mesh with its shardings as `training.loop` does,
then traces, lowers and compiles the loop's train step (`LeafStep`) for one global batch of
the config's shape. It reads the dataset's description (shape, classes) but no example, and
writes nothing: no workdir, no checkpoint (only jax's compilation cache, which the real run
then reuses). What it reports:

- the parameter count, the devices and the mesh;
- one batch's shapes, global and per device;
- the bytes of parameters, optimizer state and EMA each device holds;
- XLA's memory analysis of the compiled step per device (arguments, outputs, aliased
  (donated) buffers, temporaries, generated code), their live total (arguments + outputs -
  aliased + temporaries), the backend's peak where it counts the temporaries (XLA:CPU's
  does not), and the step's FLOPs where the backend counts them.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import ml_collections

from data import pipeline
from networks import layers
from training import loop, run_info, sharding
from training.checkpoint import abstract_with_shardings
from training.sharding import state_shardings
from training.step import LeafStep

# CompiledMemoryStats fields, as shown (those a backend leaves at 0 are skipped).
_MEMORY_FIELDS = (("argument_size_in_bytes", "arguments"), ("output_size_in_bytes", "outputs"),
                  ("alias_size_in_bytes", "aliased (donated)"),
                  ("temp_size_in_bytes", "temporaries"),
                  ("generated_code_size_in_bytes", "generated code"),
                  ("host_argument_size_in_bytes", "host arguments"),
                  ("host_output_size_in_bytes", "host outputs"),
                  ("host_temp_size_in_bytes", "host temporaries"),
                  ("peak_memory_in_bytes", "peak"))


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def memory_stats(compiled) -> dict[str, int]:
    """{field: bytes} of `compiled.memory_analysis()`; {} where the backend has none."""
    try:
        stats = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError, AttributeError):
        return {}
    out = {}
    for field, _ in _MEMORY_FIELDS:
        try:
            value = getattr(stats, field, None)
        except (NotImplementedError, RuntimeError):  # a field the backend does not fill
            value = None
        if value is not None:
            out[field] = int(value)
    return out


def live_bytes(memory: dict[str, int]) -> int | None:
    """Arguments + outputs - aliased (donated) + temporaries: what the step holds at once
    per device, or None without the figures."""
    if "temp_size_in_bytes" not in memory:
        return None
    return (memory.get("argument_size_in_bytes", 0) + memory.get("output_size_in_bytes", 0)
            - memory.get("alias_size_in_bytes", 0) + memory["temp_size_in_bytes"])


def flops(compiled) -> float | None:
    """The compiled program's FLOPs per call (per device), if the backend counts them."""
    try:
        cost = compiled.cost_analysis()
    except (NotImplementedError, RuntimeError, AttributeError):
        return None
    if isinstance(cost, list | tuple):  # one dict per program in some jax versions
        cost = cost[0] if cost else None
    value = cost.get("flops") if cost else None
    return float(value) if value is not None and value >= 0 else None


def abstract_batch(config: ml_collections.ConfigDict, batch_sharding) -> dict[str, Any]:
    """One global batch as the loop feeds it: `image` float32 (B, *shape), `label` int32,
    and the dataset's extra images (`photos`: `style`) like `image`."""
    info = pipeline.get_info(config.data)
    shape, b = tuple(info.shape), int(config.training.batch_size)
    image = jax.ShapeDtypeStruct((b, *shape), jnp.float32, sharding=batch_sharding)
    return {"image": image, **{key: image for key in info.extra_images},
            "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch_sharding)}


def dry_run(config: ml_collections.ConfigDict, *, devices=None,
            out: TextIO | None = None) -> dict[str, Any]:
    """Builds, lowers and compiles the train step of `config` abstractly and prints what it
    holds (see the module docstring) to `out` (default stdout; process 0 only). Returns
    the figures. Raises UserError for what `training.loop.run` would refuse."""
    out = out or sys.stdout
    family, mesh, batch_sharding = loop.build(config, devices)
    abstract = jax.eval_shape(family.init_state, jax.random.PRNGKey(config.seed))
    state_sh = state_shardings(abstract, mesh, config.sharding.rules)
    state = abstract_with_shardings(abstract, state_sh)
    batch = abstract_batch(config, batch_sharding)

    step = LeafStep(family.train_step, state, state_sh, batch_sharding,
                    sharding.replicated(mesh), layers.compiler_options(family.data_shape))
    start = time.perf_counter()
    lowered = step.jitted.lower(step.leaves(state), batch)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start

    per_device = {name: sharding.bytes_per_device(getattr(state, name))
                  for name in ("params", "opt_state", "ema_params", "aux")}
    report = {
        "parameters": run_info.count(state.params),
        "devices": run_info.devices(mesh), "mesh": sharding.mesh_description(mesh),
        "batch": {k: tuple(v.shape) for k, v in batch.items()},
        "batch_per_device": {k: tuple(batch_sharding.shard_shape(v.shape))
                             for k, v in batch.items()},
        "state_bytes_per_device": {**per_device,
                                   "total": sharding.bytes_per_device(state)},
        "step_memory": memory_stats(compiled), "step_flops": flops(compiled),
        "step_live_bytes": None,
        "lower_s": lower_s, "compile_s": compile_s,
    }
    report["step_live_bytes"] = live_bytes(report["step_memory"])
    if jax.process_index() == 0:
        _print(report, config, out)
    return report


def _print(report: dict[str, Any], config: ml_collections.ConfigDict, out: TextIO) -> None:
    say = lambda text: print(text, file=out, flush=True)
    say(f"dry run: {config.model.family} {config.model.name} on {config.data.dataset}, "
        f"batch {config.training.batch_size}, {config.model.dtype}")
    say(f"parameters: {report['parameters']:,}")
    say(f"devices: {report['devices']}, mesh {report['mesh']}")
    shapes = lambda d: ", ".join(f"{k} {v}" for k, v in d.items())
    say(f"batch: {shapes(report['batch'])}; per device: {shapes(report['batch_per_device'])}")
    state = report["state_bytes_per_device"]
    say(f"state per device: {_mib(state['total'])} (parameters {_mib(state['params'])}, "
        f"optimizer {_mib(state['opt_state'])}, EMA {_mib(state['ema_params'])}"
        + (f", other {_mib(state['aux'])}" if state["aux"] else "") + ")")
    memory = dict(report["step_memory"])
    if memory.get("peak_memory_in_bytes", 0) < memory.get("temp_size_in_bytes", 0):
        del memory["peak_memory_in_bytes"]  # a figure without the temporaries (XLA:CPU)
    shown = [f"{label} {_mib(memory[field])}" for field, label in _MEMORY_FIELDS
             if memory.get(field)]
    if report["step_live_bytes"] is not None:
        shown.append(f"live total {_mib(report['step_live_bytes'])}")
    say("compiled train step, memory per device: "
        + (", ".join(shown) if shown else "not reported by this backend"))
    if report["step_flops"] is not None:
        say(f"compiled train step: {report['step_flops']:.4g} FLOPs per step per device")
    say(f"traced and lowered in {report['lower_s']:.1f} s, compiled in "
        f"{report['compile_s']:.1f} s; nothing was written")
