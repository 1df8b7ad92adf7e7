"""A run's config from its workdir alone: training writes `WORKDIR/config.json` when it
starts a run (training/loop.py), so sampling and evaluating need no `--config`.

`load_run_config(workdir)` reads it back; with an explicit config (`--config` and its
`--config.x=` overrides) it checks that the explicit config describes the same model (the
keys of `training.checkpoint.config_identity`: network, data, SDE, ...) and returns the
explicit one, whose sampling, eval, sharding, dtype and other settings win.

This file is also a config file for ml_collections' `--config` flag:
`--config=training/run_config.py:WORKDIR` is the workdir's config, so `--config.x=`
overrides work on it (`workdir_config_argv` adds that flag for a CLI given overrides
without `--config`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import ml_collections

from configs.default import get_default_config
from errors import UserError

CONFIG_FILE = "config.json"


def _missing(workdir: str | os.PathLike) -> UserError:
    return UserError(f"no {CONFIG_FILE} in {workdir}: pass --config, or train first")


def _merge(node: ml_collections.ConfigDict, values: dict[str, Any]) -> None:
    """Writes the JSON `values` into `node` (the defaults): lists become tuples where the
    default is a tuple, keys the defaults lack are added."""
    for key, value in values.items():
        current = node.get(key) if key in node else None
        if isinstance(current, ml_collections.ConfigDict) and isinstance(value, dict):
            _merge(current, value)
            continue
        if isinstance(value, list):
            value = _tuples(value)
        if isinstance(value, dict):
            value = ml_collections.ConfigDict(value)
        if key in node:
            try:
                node[key] = value
                continue
            except TypeError:  # another type than the default's: the run's value stands
                pass
        with node.unlocked():
            if key in node:
                del node[key]
            node[key] = value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def read_run_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict | None:
    """WORKDIR/config.json as a locked ConfigDict (None if there is none); UserError if
    it cannot be read."""
    if "://" in os.fspath(workdir):  # a bucket, through epath (data/ imports jax: only here)
        from data import paths

        path = paths.resolve(workdir) / CONFIG_FILE
    else:
        path = Path(workdir) / CONFIG_FILE
    try:
        if not path.is_file():
            return None
        values = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path} cannot be read ({' '.join(str(err).split())[:200]}): pass "
                        "--config, or train first") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} is not a config (a JSON object): pass --config, or train "
                        "first")
    config = get_default_config()
    _merge(config, values)
    config.lock()
    return config


def load_run_config(workdir: str | os.PathLike,
                    config: ml_collections.ConfigDict | None = None
                    ) -> ml_collections.ConfigDict:
    """The config of the run in `workdir`.

    Without `config`: WORKDIR/config.json (UserError if missing or unreadable). With
    `config` (from --config and its overrides): `config`, once checked against the run's
    config.json (where there is one) on every key of the model's identity; the first
    that differs is a one-line UserError. Its sampling/eval/sharding keys win.
    """
    # Here, not at the top: the CLIs import this module before their checks of the flags,
    # which should not wait for jax and orbax (this module imports neither).
    from training.checkpoint import config_identity

    stored = read_run_config(workdir)
    if config is None:
        if stored is None:
            raise _missing(workdir)
        return stored
    if stored is None:  # a run older than config.json, or samples-only: nothing to check
        return config
    ours, theirs = config_identity(config), config_identity(stored)
    for key in sorted(set(ours) | set(theirs), key=lambda k: (k not in theirs, k)):
        if ours.get(key) != theirs.get(key):
            raise UserError(
                f"--config gives {key}={ours.get(key)!r}, but the run in {workdir} was "
                f"trained with {theirs.get(key)!r} ({CONFIG_FILE}): that is another model; "
                "drop --config (or that override), or pass the run's --workdir")
    return config


# The parameters each SDE reads: two runs share an SDE when these and training.sde agree
# (a guide, a classifier or a distillation teacher with the model it serves).
SDE_PARAMETERS = {"vpsde": ("model.beta_min", "model.beta_max"),
                  "subvpsde": ("model.beta_min", "model.beta_max"),
                  "vesde": ("model.sigma_min", "model.sigma_max")}


def _get(config: ml_collections.ConfigDict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def differing(keys: tuple[str, ...], theirs: ml_collections.ConfigDict,
              mine: ml_collections.ConfigDict) -> list[str]:
    """`key=theirs vs mine` for each dotted key whose values differ (a guide's, a
    classifier's or a teacher's config against the model's)."""
    return [f"{k}={_get(theirs, k)!r} vs {_get(mine, k)!r}"
            for k in keys if _get(theirs, k) != _get(mine, k)]


def get_config(workdir: str) -> ml_collections.ConfigDict:
    """ml_collections' config-file entry: `--config=training/run_config.py:WORKDIR`."""
    return load_run_config(workdir)


def _flag_value(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.partition("=")[2]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def workdir_config_argv(argv: list[str]) -> list[str]:
    """`argv` with `--config=<this file>:WORKDIR` added when it has `--config.x=`
    overrides and `--workdir` but no `--config`, so that the overrides apply to the run's
    config. UserError if that run has no config.json."""
    if any(arg == "--config" or arg.startswith("--config=") for arg in argv):
        return argv
    if not any(arg.startswith("--config.") for arg in argv[1:]):
        return argv
    workdir = _flag_value(argv, "workdir")
    if not workdir:
        return argv  # the CLI reports the missing --workdir
    if read_run_config(workdir) is None:
        raise UserError(f"--config.* overrides without --config need the run's "
                        f"{CONFIG_FILE}, and {workdir} has none: pass --config, or train "
                        "first")
    return [argv[0], f"--config={os.path.abspath(__file__)}:{workdir}", *argv[1:]]
