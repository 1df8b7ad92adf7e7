"""A seconds-fast digits config for tests: `tests/configs/tiny.py:vesde` picks the SDE
(`:toy` trains the MLP on the 2-D mixture of Gaussians)."""

from configs.default import get_default_config


def shrink(config):
    """An experiment's config at these seconds-fast sizes, for one step: batch 16, an
    8-wide one-level U-Net, a constant rate (resume tests extend n_iters), saved at the
    end only (saves are slow)."""
    training = config.training
    training.batch_size = 16
    training.n_iters = 1
    training.log_freq = 1
    training.eval_freq = 1
    training.snapshot_freq = 1
    training.snapshot_freq_for_preemption = 1000
    training.num_snapshot_samples = 4
    config.model.nf = 8
    config.model.ch_mult = (1,)
    config.optim.warmup = 0
    config.optim.schedule = "constant"
    return config


def get_config(sde: str = "vpsde"):
    config = get_default_config()
    config.training.sde = sde or "vpsde"
    config.training.batch_size = 16
    config.training.n_iters = 2
    config.training.log_freq = 1
    config.training.eval_freq = 1
    config.training.snapshot_freq = 2
    config.training.snapshot_freq_for_preemption = 1000  # save at the end only: saves are slow
    config.training.num_snapshot_samples = 4
    config.sampling.steps = 3
    config.data.centered = sde != "vesde"
    config.model.nf = 8
    config.model.ch_mult = (1,)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = ()
    config.model.dropout = 0.1
    config.model.sigma_max = 10.0
    config.optim.warmup = 0
    config.optim.lr = 1e-3
    config.optim.schedule = "constant"  # resume tests extend n_iters, which moves a cosine
    if sde == "toy":  # 2-D mixture of Gaussians with the MLP score network
        config.training.sde = "vpsde"
        config.data.dataset = "toy_gmm"
        config.data.num_toy_samples = 512
        config.data.num_toy_test_samples = 64
        config.model.name = "mlp"
        config.model.hidden = 16
        config.model.num_layers = 2
        config.eval.metrics = "fd,kid,pr,cs,nll"  # points: nll in place of bits/dim
    if sde == "vesde":
        config.model.name = "ncsnpp"
        config.model.embedding_type = "fourier"
        config.sampling.predictor = "reverse_diffusion"
        config.sampling.corrector = "langevin"
    return config
