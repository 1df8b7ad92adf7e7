"""configs/digits_rf.py (rectified flow) at tests/configs/tiny.py's seconds-fast sizes."""

from configs.digits_rf import get_config as digits_rf_config
from tests.configs.tiny import shrink


def get_config():
    config = shrink(digits_rf_config())
    config.sampling.steps = 2
    return config
