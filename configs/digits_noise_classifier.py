"""A noise-conditional classifier p(y | x_t, t) of the 8x8 digits for classifier guidance.

Trained on digits forward-noised by the same VP SDE as digits_vp (t ~ U(eps, T)); use it
with any digits VP model: `sample.py --classifier_workdir runs/digits_classifier
--classifier_config configs/digits_noise_classifier.py --classifier_scale S`. For a VE or
sub-VP model, train one with the matching SDE (`--config.training.sde=vesde
--config.data.centered=False`).
"""

from configs.default import get_default_config


def get_config():
    config = get_default_config()
    config.model.family = "noise_classifier"
    config.model.name = "noise_cnn"
    config.model.nf = 32
    config.model.ch_mult = (1, 2, 2)
    config.model.num_res_blocks = 1
    config.model.dropout = 0.1
    config.model.ema_rate = 0.999
    config.training.sde = "vpsde"
    config.training.n_iters = 3000
    config.training.batch_size = 128
    config.training.snapshot_sampling = False  # a classifier draws no samples
    config.optim.lr = 1e-3
    config.optim.warmup = 100
    return config
