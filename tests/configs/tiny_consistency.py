"""configs/digits_cd.py (`:cd`, the default) and configs/digits_ct.py (`:ct`) at
tests/configs/tiny.py's seconds-fast sizes; the teacher of `:cd` is a tiny.py run, named
with --config.distill.teacher_workdir."""

from configs.digits_cd import get_config as digits_cd_config
from configs.digits_ct import get_config as digits_ct_config
from tests.configs.tiny import shrink


def get_config(kind: str = "cd"):
    config = shrink({"cd": digits_cd_config, "ct": digits_ct_config}[kind or "cd"]())
    config.distill.teacher_workdir = "" if kind == "ct" else "/nonexistent/teacher"
    config.consistency.intervals = 8 if kind == "ct" else 4
    config.consistency.initial_intervals = 2 if kind == "ct" else 4
    return config
