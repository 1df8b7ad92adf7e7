"""The distillation configs at tests/configs/tiny.py's seconds-fast sizes: `:teacher` (a
v-prediction digits_vp), `:cd` (configs/digits_cd.py, the default), `:ct`
(configs/digits_ct.py) and `:pd` (configs/digits_pd.py, 4 DDIM steps halved to 1 in two
rounds). The students' teacher is named with --config.distill.teacher_workdir."""

from configs.digits_cd import get_config as digits_cd_config
from configs.digits_ct import get_config as digits_ct_config
from configs.digits_pd import get_config as digits_pd_config
from configs.digits_vp import get_config as digits_vp_config
from tests.configs.tiny import shrink


def _teacher():
    config = digits_vp_config()
    config.model.preconditioning = "v"
    config.training.objective = "v_prediction"
    return config


def get_config(kind: str = "cd"):
    kind = kind or "cd"
    config = shrink({"teacher": _teacher, "cd": digits_cd_config, "ct": digits_ct_config,
                     "pd": digits_pd_config}[kind]())
    if kind in ("cd", "pd"):
        config.distill.teacher_workdir = "/nonexistent/teacher"
    if kind == "cd":
        config.consistency.intervals = config.consistency.initial_intervals = 4
        config.consistency.solver = "euler"  # one teacher call: a smaller program to compile
    if kind == "ct":
        config.consistency.intervals, config.consistency.initial_intervals = 8, 2
    if kind == "pd":
        config.progressive.teacher_steps, config.progressive.student_steps = 4, 1
        config.progressive.round_steps = 1
        config.sampling.steps = 1
    return config
