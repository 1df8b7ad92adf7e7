"""What a run logs about itself at the start (and `train.py --dry_run` prints): the parameter
count, the devices, the mesh, the per-device state and the resolved config."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from training import sharding


def count(tree) -> int:
    """Elements of the arrays (or ShapeDtypeStructs) of `tree`."""
    return sum(int(np.prod(getattr(leaf, "shape", ()), dtype=np.int64))
               for leaf in jax.tree.leaves(tree))


def devices(mesh: Mesh) -> str:
    """'8 devices (cpu, 1 process)': the mesh's devices, their platform, the processes."""
    platforms = sorted({d.platform for d in mesh.devices.flat})
    processes = jax.process_count()
    return (f"{mesh.size} device{'s' if mesh.size > 1 else ''} ({', '.join(platforms)}, "
            f"{processes} process{'es' if processes > 1 else ''})")


def config_json(config: ml_collections.ConfigDict) -> str:
    """The resolved config as one line of JSON (sorted keys)."""
    return config.to_json_best_effort(separators=(",", ":"), sort_keys=True)


def log_start(config: ml_collections.ConfigDict, mesh: Mesh, state) -> None:
    """The start of a run, at INFO: the 'Train state:' line (parameters, devices, mesh,
    state per device) and the resolved config."""
    logging.info("Train state: %d parameters, %s, mesh %s, %.2f MiB of state per device",
                 count(state.params), devices(mesh), sharding.mesh_description(mesh),
                 sharding.bytes_per_device(state) / 2**20)
    logging.info("Config: %s", config_json(config))
