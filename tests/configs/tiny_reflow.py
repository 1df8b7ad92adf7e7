"""Reflow at tests/configs/tiny.py's seconds-fast sizes: `:rf` (configs/digits_rf.py, the
teacher) and `:reflow` (configs/digits_reflow.py, the default). The student's pairs and
teacher are named with --config.reflow.pairs and --config.distill.teacher_workdir."""

from configs.digits_reflow import get_config as digits_reflow_config
from configs.digits_rf import get_config as digits_rf_config
from tests.configs.tiny import shrink


def get_config(kind: str = "reflow"):
    kind = kind or "reflow"
    config = shrink({"rf": digits_rf_config, "reflow": digits_reflow_config}[kind]())
    config.sampling.steps = 2
    if kind == "reflow":
        config.reflow.pairs = "/nonexistent/pairs.npz"
        config.distill.teacher_workdir = ""
    return config
