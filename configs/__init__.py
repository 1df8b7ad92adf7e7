"""Experiment configs; `load` reads one the way the CLIs' `--config` flag does."""

import importlib.util
from pathlib import Path

import ml_collections

_ROOT = Path(__file__).resolve().parent.parent


def load(spec: str) -> ml_collections.ConfigDict:
    """The config of `spec`, 'path/to/file.py' or 'path/to/file.py:arg' (`get_config(arg)`).

    A relative path is read from the working directory, else from the repository root.
    Raises ValueError naming the file if it is missing or has no `get_config`.
    """
    path_text, _, arg = str(spec).partition(":")
    path = Path(path_text)
    if not path.is_file() and not path.is_absolute() and (_ROOT / path).is_file():
        path = _ROOT / path
    if not path.is_file():
        raise ValueError(f"config file {path_text!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path_text!r} has no get_config()")
    return module.get_config(arg) if arg else module.get_config()
