"""Defaults shared by every experiment; score_sde's key names.

Experiment files start from `get_default_config()` and change existing keys only: the
returned ConfigDict is locked, so a misspelt key in an experiment file or on the command
line (`--config.training.n_iter=5`) is an error that names it instead of a silent no-op.
"""

import ml_collections


def get_default_config() -> ml_collections.ConfigDict:
    """The base configuration: a small VP diffusion model on the embedded digits."""
    config = ml_collections.ConfigDict()
    config.seed = 42

    config.training = training = ml_collections.ConfigDict()
    # Sized so the README's default run takes under 10 minutes on 2 CPU cores (see README).
    training.batch_size = 64  # global: split over all devices and processes
    training.n_iters = 4000
    training.log_freq = 50
    training.eval_freq = 500  # held-out loss on a test batch, at log steps divisible by it
    training.snapshot_freq = 1000  # kept checkpoint + sample grid
    training.snapshot_freq_for_preemption = 250  # rolling checkpoint
    training.max_to_keep = 3  # rolling checkpoints kept besides the snapshot ones
    training.snapshot_sampling = True  # write a PNG grid of EMA samples at each snapshot
    training.num_snapshot_samples = 64
    training.sde = "vpsde"
    # 'dsm': score_sde's denoising score matching, t ~ U(eps, T) (continuous) or the DDPM /
    # SMLD discrete loss; 'edm': EDM's lognormal noise levels ln sigma ~ N(P_mean, P_std^2)
    # and its weighting (pairs with model.preconditioning='edm').
    training.objective = "dsm"
    training.P_mean = -1.2
    training.P_std = 1.2
    training.continuous = True
    training.likelihood_weighting = False
    training.reduce_mean = False
    # Class-conditional models (model.num_classes > 0): probability of replacing a label by
    # the null label (index num_classes) during training, which classifier-free guidance
    # needs; 0 = no null label (no guidance).
    training.class_dropout = 0.0
    # One optimizer update from this many micro-batches of the global batch (same update,
    # 1/k of the activation memory). Steps, EMA and schedules count optimizer updates.
    training.grad_accum_steps = 1

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = "pc"  # 'pc' | 'ode'
    sampling.predictor = "euler_maruyama"
    sampling.corrector = "none"
    sampling.snr = 0.16
    sampling.n_steps_each = 1
    sampling.noise_removal = True
    sampling.probability_flow = False
    sampling.steps = 250
    sampling.eps = 1e-3
    # Classifier-free guidance weight w of class-conditional models: (1 + w) s(x, t, y) -
    # w s(x, t, null); 0 = the conditional model alone. sample.py's --guidance_scale.
    sampling.guidance_scale = 0.0
    # Options of the other samplers (sample.py --sampler NAME reads those NAME has); unset
    # = the sampler's own default. dpm_solver_pp: eta (0 = DPM-Solver++(2M), 1 = its SDE
    # variant), time_grid ('logsnr'); edm_heun: the churn S_churn, S_min, S_max, S_noise and
    # rho; euler/heun: time_grid ('edm' | 'uniform') and rho.
    placeholder = ml_collections.config_dict.placeholder
    sampling.eta = placeholder(float)
    sampling.time_grid = placeholder(str)
    sampling.rho = placeholder(float)
    sampling.S_churn = placeholder(float)
    sampling.S_min = placeholder(float)
    sampling.S_max = placeholder(float)
    sampling.S_noise = placeholder(float)

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
    data.num_synthetic_samples = 50_000  # dataset 'synthetic': train size (test: a fifth)

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
    model.nf = 32
    model.ch_mult = (1, 2, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = ()  # 8x8 needs no attention; it costs a quarter of the step
    model.dropout = 0.0
    model.resamp_with_conv = True
    model.skip_rescale = True
    model.resblock_type = "biggan"
    model.embedding_type = "positional"
    model.fourier_scale = 16.0
    model.init_scale = 0.0
    # How the network's output becomes a score: 'none' (score_sde: noise prediction for VP,
    # scaled score for VE) or 'edm' (EDM's c_skip / c_out / c_in denoiser around data of
    # std sigma_data; diffusion/score.py).
    model.preconditioning = "none"
    model.sigma_data = 0.5
    # Compute dtype of activations, matmuls and convolutions: 'float32' | 'bfloat16'.
    # Parameters, optimizer state, EMA, the loss and normalisation statistics stay float32.
    model.dtype = "float32"
    # 'none' | 'block': recompute each res/attention block in the backward pass
    # (nnx.remat), trading compute for activation memory.
    model.remat = "none"
    model.conv_impl = "auto"  # 'auto' | 'xla' | 'matmul' (patches x matmul: faster on CPU)
    model.num_classes = 0  # > 0: class-conditional on the dataset's labels (0 .. K-1)
    # > 0: the networks conditioned on this many k-means clusters of the training images
    # (GAN, pixel diffusion; Liu et al.'s self-conditioning). The model stays unconditional:
    # sampling draws the clusters by their frequencies, 'iid' (independent draws, as an
    # unconditional model samples: what headline figures use) or 'stratified' (every run of
    # samples holds each cluster in proportion, as the stratified test split holds the
    # classes: a variance-reduction option, reported beside the i.i.d. figure).
    model.self_condition_clusters = 0
    model.cluster_draws = "iid"
    model.fir = False
    model.fir_kernel = (1, 3, 3, 1)
    model.progressive = "none"
    model.progressive_input = "none"
    model.hidden = 128  # mlp score network (2-D toy data)
    model.num_layers = 3
    # GANs (model.family='gan', model.name 'dcgan' | 'resnet'): generator width model.nf,
    # latent z of latent_dim, discriminator width d_nf, spectral norm in the discriminator.
    model.latent_dim = 64
    model.d_nf = 32
    model.spectral_norm = False
    model.convs_per_stage = 1  # DCGAN: 3x3 convs per resolution in G and D
    # VAEs (model.family='vae', model.name 'conv_vae'): channels of the spatial latent,
    # image_size / 2**(len(ch_mult) - 1) on a side.
    model.latent_channels = 2
    model.ema_rate = 0.999
    model.beta_min = 0.1
    model.beta_max = 20.0
    model.sigma_min = 0.01
    model.sigma_max = 50.0
    model.num_scales = 1000

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

    # model.family='gan': the adversarial objective and its regularisers.
    config.gan = gan = ml_collections.ConfigDict()
    gan.loss = "ns"  # 'ns' (non-saturating logistic) | 'hinge' | 'relativistic' (RpGAN)
    gan.r1_gamma = 0.0  # gamma / 2 * E ||grad D(real)||^2 (Mescheder et al.); 0 = off
    gan.r2_gamma = 0.0  # the same on fake data
    gan.reg_interval = 4  # lazy regularisation: the penalties every k steps, weighted k
    gan.ema_halflife_images = 10_000  # generator EMA half-life in images; 0 = no EMA
    gan.ema_rampup = placeholder(float)  # half-life <= rampup * images seen; unset = none
    gan.augment = ""  # DiffAugment policy for real and fake alike: 'color,translation,cutout'
    gan.d_lr = placeholder(float)  # discriminator learning rate; unset = optim.lr

    # model.family='vae': the objective; evaluate.py reports the ELBO and the IWAE bound.
    config.vae = vae = ml_collections.ConfigDict()
    vae.likelihood = "discretized_logistic"  # | 'discretized_gaussian' | 'bernoulli'
    vae.num_bins = 256  # levels of the discretised data (8-bit)
    vae.beta = 1.0  # weight of the KL term
    vae.kl_warmup_steps = 0  # linear warm-up of the KL weight from 0 to beta
    vae.free_bits = 0.0  # nats per latent channel below which the KL is not pushed down
    vae.iwae_samples = 64  # k of the importance-weighted bound (evaluation)

    # model.family='latent_diffusion': the trained VAE whose latent space the diffusion
    # model lives in (its config file, 'path.py[:arg]', and workdir); latents are scaled
    # to unit variance over the training split.
    config.latent = latent = ml_collections.ConfigDict()
    latent.vae_config = ""
    latent.vae_workdir = ""
    # The VAE checkpoint the latent model encodes with; unset = the newest. Training
    # records the one it used, so a VAE trained further later is caught, not used.
    latent.vae_step = placeholder(int)

    # model.family='noise_classifier': what the noise-conditional network learns. 'labels':
    # the dataset's classes (classifier guidance); 'discriminator': the training images
    # against a model's samples, the .npz in fake_samples (discriminator guidance).
    config.classifier = classifier = ml_collections.ConfigDict()
    classifier.objective = "labels"
    classifier.fake_samples = ""

    config.sharding = sharding = ml_collections.ConfigDict()
    # Mesh axes and sizes; -1 takes the devices left over. The batch is split over both axes.
    sharding.mesh = (("data", -1), ("fsdp", 1))
    # (regex over the parameter path, rule) in order, first match wins. Rules: 'replicate',
    # or 'fsdp' (shard the largest dimension that the fsdp axis divides).
    sharding.rules = ((".*", "fsdp"),)

    config.lock()
    return config


def get_config() -> ml_collections.ConfigDict:
    return get_default_config()
