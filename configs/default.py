"""Defaults shared by every experiment; score_sde's key names.

`base_config()` holds the keys every family reads; the keys only some families read (the
SDE and samplers, the GAN's, the VAE's, ...) are grouped in `configs/sections.py`, which
says which families take each group, and `get_default_config()` composes the two.

Experiment files start from `get_default_config()` and change existing keys only: the
returned ConfigDict is locked, so a misspelt key in an experiment file or on the command
line (`--config.training.n_iter=5`) is an error that names it instead of a silent no-op.
"""

import ml_collections

from configs import sections


def base_config() -> ml_collections.ConfigDict:
    """The keys every family reads (unlocked); the family-specific ones are the groups'."""
    config = ml_collections.ConfigDict()
    config.seed = 42

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 64  # global: split over all devices and processes
    training.n_iters = 4000
    training.log_freq = 50
    training.eval_freq = 500  # held-out loss on a test batch, at log steps divisible by it
    training.snapshot_freq = 1000  # kept checkpoint + sample grid
    training.snapshot_freq_for_preemption = 250  # rolling checkpoint
    training.max_to_keep = 3  # rolling checkpoints kept besides the snapshot ones
    training.snapshot_sampling = True  # write a PNG grid of EMA samples at each snapshot
    training.num_snapshot_samples = 64
    # One optimizer update from this many micro-batches of the global batch (same update,
    # 1/k of the activation memory). Steps, EMA and schedules count optimizer updates.
    training.grad_accum_steps = 1

    config.data = data = ml_collections.ConfigDict()
    data.dataset = "digits"
    data.image_size = 8
    data.num_channels = 1
    data.centered = True
    data.random_flip = False
    data.uniform_dequantization = False
    # None: $TFDS_DATA_DIR, else ~/tensorflow_datasets.
    data.data_dir = ml_collections.config_dict.placeholder(str)
    data.num_toy_samples = 100_000  # 2-D toy datasets (toy_gmm, toy_moons, ...): train size
    data.num_toy_test_samples = 10_000
    data.num_synthetic_samples = 50_000  # 'synthetic', 'photos': train size (test: a fifth)
    # Each example also gets a caption (`caption`: a row of data.captions' training bank).
    data.captions = False

    # evaluate.py's defaults, and the evaluation training can run every eval_freq steps.
    config.eval = evaluation = ml_collections.ConfigDict()
    # evaluate.py; any of fd, kid, pr, cs, bpd (images) or nll (2-D toy points, nats/point)
    evaluation.metrics = "fd,kid,pr,cs,bpd"
    evaluation.metrics_during_training = ""  # e.g. "fd,kid,pr,cs" every eval_freq; "" = off
    evaluation.num_samples = 1000
    evaluation.batch_size = 500  # samples per sampler call, test images per likelihood call
    evaluation.seed = 0
    evaluation.feature_net = "auto"  # 'auto' (digits_cnn on digits) | 'digits_cnn' | 'inception'
    evaluation.inception_weights = ""  # path of pt_inception-2015-12-05-6726825d.pth
    # 'floors' (the project's: metrics beside real-data floors) | 'fid50k' (the literature's
    # FID: 50,000 samples against the train split's Inception statistics; docs/evaluation.md)
    evaluation.protocol = "floors"
    evaluation.fid_reference = ""  # fid50k: a user's mu/sigma .npz; "" = computed and cached
    # The likelihood settings of bits/dim, and of nll on 2-D points.
    evaluation.bpd_divergence = "hutchinson_rademacher"  # | 'hutchinson_gaussian' | 'exact'
    evaluation.bpd_eps = 1e-5
    evaluation.bpd_rtol = 1e-5
    evaluation.bpd_atol = 1e-5
    evaluation.bpd_num_probes = 1  # Hutchinson probes averaged per divergence (variance / M)
    # K uniform dequantizations per test image, combined as log (1/K) sum_k p(x + u_k) (the
    # importance-weighted bound, tighter with K); 1 = plain uniform dequantization. A bound
    # only with bpd_divergence='exact': Hutchinson noise (~7 nats sd per digit, one probe)
    # biases the log-mean-exp upwards.
    evaluation.bpd_dequant_samples = 1

    config.model = model = ml_collections.ConfigDict()
    model.family = "diffusion"
    model.name = "ddpmpp"
    model.nf = 32  # width of the network (a GAN's generator)
    # Compute dtype of activations, matmuls and convolutions: 'float32' | 'bfloat16'.
    # Parameters, optimizer state, EMA, the loss and normalisation statistics stay float32.
    model.dtype = "float32"
    # 'none' | 'block': recompute each res/attention block in the backward pass
    # (nnx.remat), trading compute for activation memory.
    model.remat = "none"
    model.conv_impl = "auto"  # 'auto' | 'xla' | 'matmul' (patches x matmul: faster on CPU)
    model.num_classes = 0  # > 0: class-conditional on the dataset's labels (0 .. K-1)

    config.optim = optim = ml_collections.ConfigDict()
    optim.optimizer = "Adam"
    optim.lr = 2e-3
    optim.beta1 = 0.9
    optim.beta2 = 0.999
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.warmup = 100
    # After warm-up: 'constant' (score_sde) | 'cosine' (to 0 at n_iters). On digits, cosine
    # with EMA 0.999 over 4000 steps halves FD against 2000 constant-rate steps.
    optim.schedule = "cosine"
    optim.grad_clip = 1.0

    config.sharding = sharding = ml_collections.ConfigDict()
    # Mesh axes and sizes; -1 takes the devices left over. The batch is split over both axes.
    sharding.mesh = (("data", -1), ("fsdp", 1))
    # (regex over the parameter path, rule) in order, first match wins. Rules: 'replicate',
    # or 'fsdp' (shard the largest dimension that the fsdp axis divides).
    sharding.rules = ((".*", "fsdp"),)
    return config


def get_default_config() -> ml_collections.ConfigDict:
    """The base configuration: a small VP diffusion model on the embedded digits."""
    config = sections.compose(base_config())
    config.lock()
    return config


def get_config() -> ml_collections.ConfigDict:
    return get_default_config()
