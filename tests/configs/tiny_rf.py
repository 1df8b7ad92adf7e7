"""configs/digits_rf.py (rectified flow) at tests/configs/tiny.py's seconds-fast sizes."""

from configs.digits_rf import get_config as digits_rf_config


def get_config():
    config = digits_rf_config()
    training = config.training
    training.batch_size = 16
    training.n_iters = 1
    training.log_freq = 1
    training.eval_freq = 1
    training.snapshot_freq = 1
    training.snapshot_freq_for_preemption = 1000  # save at the end only: saves are slow
    training.num_snapshot_samples = 4
    config.sampling.steps = 2
    config.model.nf = 8
    config.model.ch_mult = (1,)
    config.optim.warmup = 0
    config.optim.schedule = "constant"  # the resume test extends n_iters
    return config
