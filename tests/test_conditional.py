"""Controllable generation, model side: class-conditional training with label dropout,
classifier-free and classifier guidance, the noise-classifier family, and sample.py's
conditional and image-conditioned modes (tiny configs, one trained run per module)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from diffusion import guidance, sampling
from errors import UserError
from tests.configs import tiny, tiny_families, tiny_guided
from tests.test_cli import ROOT, _error_line, _run
from training import eval_hook, loop
from training.families import diffusion as diffusion_family
from training.families import get_family
from training.families.request import SampleRequest as R

GUIDED = str(ROOT / "tests" / "configs" / "tiny_guided.py")
ONE_DEVICE = jax.devices()[:1]


def _perturbed(params, seed: int = 0):
    """Initial parameters plus noise: the zero-initialised output layer would make every
    score zero, and every comparison below trivially true."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(
        tree, [p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys,
                                                                                strict=True)]
    )


@pytest.fixture(scope="module")
def cond_family():
    return get_family(tiny_guided.get_config("cond"))


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    """The tiny conditional model trained 2 steps by train.py, with a snapshot grid (the
    loop samples it with the default labels 0..9 in turn)."""
    workdir = tmp_path_factory.mktemp("cond")
    proc = _run("train.py", f"--config={GUIDED}:cond", f"--workdir={workdir}",
                "--config.training.snapshot_sampling=True")
    assert proc.returncode == 0, proc.stderr
    assert "step 2:" in proc.stderr and "loss=" in proc.stderr
    assert (workdir / "samples" / "step_0000002.png").is_file()
    return workdir


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    """The tiny noise classifier trained 2 steps by the training loop."""
    workdir = tmp_path_factory.mktemp("classifier")
    result = loop.run(tiny_guided.get_config("classifier"), workdir, devices=ONE_DEVICE)
    return workdir, result


@pytest.fixture(scope="module")
def cond_outputs(cond_family):
    """(eval loss, conditional score, classifier-free guided score with a traced weight) of
    perturbed initial parameters, for a few labels and weights; one compiled program."""
    params = _perturbed(cond_family.init_params(jax.random.PRNGKey(0)))
    state = cond_family.init_state(jax.random.PRNGKey(0)).replace(ema_params=params)
    images = jax.random.uniform(jax.random.PRNGKey(2), (4, 8, 8, 1), minval=-1.0, maxval=1.0)
    t = jnp.full((4,), 0.5)

    @jax.jit
    def outputs(labels, w):
        loss = cond_family.eval_step(state, {"image": images, "label": labels},
                                     jax.random.PRNGKey(3))["eval_loss"]
        cond = cond_family.score_fn(params, labels=labels)(images, t)
        # A traced weight always takes the batched (conditional + null) path.
        guided = guidance.classifier_free_guidance(
            lambda x, t, y: cond_family.score_fn(params, labels=y)(x, t), labels, w,
            cond_family.null_label)(images, t)
        return loss, cond, guided

    labels = jnp.array([0, 3, 7, 9], jnp.int32)
    return {(shift, w): outputs((labels + shift) % 10, jnp.float32(w))
            for shift, w in ((0, 0.0), (1, 0.0), (0, -1.0), (0, 2.0))}


def test_label_dropout_replaces_labels_by_the_null_label_at_its_rate():
    labels = jnp.arange(20_000, dtype=jnp.int32) % 10
    dropped = np.asarray(diffusion_family.drop_labels(jax.random.PRNGKey(0), labels, 0.25, 10))
    kept = dropped != 10
    assert abs((~kept).mean() - 0.25) < 0.02
    np.testing.assert_array_equal(dropped[kept], np.asarray(labels)[kept])
    none = diffusion_family.drop_labels(jax.random.PRNGKey(0), labels, 0.0, 10)
    np.testing.assert_array_equal(none, labels)


def test_the_family_drops_training_labels_at_the_configured_rate(cond_family):
    assert cond_family.null_label == 10 and cond_family.class_dropout == 0.5
    batch = {"label": jnp.arange(10_000, dtype=jnp.int32) % 10}
    labels = np.asarray(cond_family.training_labels(jax.random.PRNGKey(1), batch))
    assert abs((labels == 10).mean() - 0.5) < 0.03
    # The network has one more label embedding: the null label.
    params = cond_family.init_params(jax.random.PRNGKey(0), abstract=True)
    assert params["label_embed"]["table"].shape[0] == 11


def test_conditional_loss_uses_the_labels(cond_outputs):
    loss, _, _ = cond_outputs[0, 0.0]
    other, _, _ = cond_outputs[1, 0.0]
    assert np.isfinite(loss) and abs(float(loss - other)) > 1e-4 * abs(float(loss))


def test_classifier_free_guidance_at_zero_is_the_conditional_score(cond_outputs):
    _, cond, at_zero = cond_outputs[0, 0.0]
    _, _, null = cond_outputs[0, -1.0]  # (1 - 1) s(x, y) + 1 s(x, null)
    _, _, at_two = cond_outputs[0, 2.0]
    assert float(jnp.abs(cond - null).max()) > 1e-3  # the labels matter
    np.testing.assert_allclose(at_zero, cond, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(at_two, 3.0 * cond - 2.0 * null, rtol=1e-4, atol=1e-4)


def test_guidance_and_labels_are_refused_where_they_cannot_apply(cond_family):
    uncond = get_family(tiny.get_config("vpsde"))
    with pytest.raises(UserError, match="needs a class-conditional model"):
        uncond.make_sampler(R(4, guidance_scale=1.0))
    with pytest.raises(UserError, match="unconditional"):
        uncond.make_sampler(R(4))(None, None, labels=3)
    with pytest.raises(UserError, match=r"out of range: the classes are 0\.\.9"):
        cond_family.make_sampler(R(4))(None, None, labels=10)
    no_null = tiny_guided.get_config("cond")
    no_null.training.class_dropout = 0.0
    with pytest.raises(UserError, match="class_dropout > 0"):
        get_family(no_null).make_sampler(R(4, guidance_scale=1.0))
    with pytest.raises(UserError, match="inpaint sampler: unknown predictor 'ode'"):
        cond_family.make_sampler(R(4, sampler="ode", task="inpaint",
                              image=np.zeros((8, 8, 1)), mask=np.ones((8, 8, 1))))
    with pytest.raises(UserError, match=r"--edit_strength must lie in \(0, 1\], got 0"):
        R(4, task="sdedit", edit_strength=0.0, image=np.zeros((8, 8, 1)))
    with pytest.raises(UserError, match="--colorize needs an RGB model"):
        cond_family.make_sampler(R(4, task="colorize", image=np.zeros((8, 8, 1))))
    mismatched = tiny_guided.get_config("cond")
    mismatched.model.num_classes = 7
    with pytest.raises(UserError, match="num_classes=7 but dataset 'digits' has 10 classes"):
        get_family(mismatched)


def test_a_sampler_that_cannot_serve_the_sde_is_a_user_error():
    subvp = get_family(tiny.get_config("subvpsde"))
    with pytest.raises(UserError, match=r"^sampler: .*subVPSDE"):
        subvp.make_sampler(R(4, sampler="ancestral", steps=2))
    with pytest.raises(UserError, match="--steps must be positive, got 0"):
        R(4, steps=0)


def test_noise_classifier_trains_two_steps_in_the_loop(classifier_run):
    workdir, result = classifier_run
    assert result["step"] == 2
    for name in ("loss", "accuracy", "eval_loss", "eval_accuracy", "eval_accuracy_clean"):
        assert np.isfinite(result[name]), name
    assert result["loss"] > 0 and (workdir / "checkpoints" / "2").is_dir()
    with pytest.raises(UserError, match="draws no samples"):
        get_family(tiny_guided.get_config("classifier")).make_sampler(R(4))


def _noise_fakes(path, num: int = 60, shape=(8, 8, 1)):
    """Uniform-noise "samples": a discriminator tells them from digits at once."""
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (num, *shape), dtype=np.uint8))
    return str(path)


def _discriminator_config(fake_samples: str, **training):
    config = tiny_guided.get_config("discriminator")
    with config.unlocked():
        config.classifier.fake_samples = fake_samples
        for key, value in training.items():
            config.training[key] = value
    return config


@pytest.fixture(scope="module")
def discriminator_run(tmp_path_factory):
    """The tiny discriminator trained 40 steps on digits against noise images."""
    workdir = tmp_path_factory.mktemp("discriminator")
    fakes = _noise_fakes(workdir.parent / "noise_fakes.npz")
    config = _discriminator_config(fakes, n_iters=40, log_freq=20, eval_freq=20,
                                   snapshot_freq=40)
    return config, workdir, loop.run(config, workdir, devices=ONE_DEVICE)


def test_the_discriminator_learns_to_tell_digits_from_noise_images(discriminator_run):
    """Real (label 1) against generated (label 0), both noised by the SDE: after 40 steps
    every clean test digit and held-out noise image is told apart."""
    config, workdir, result = discriminator_run
    assert result["step"] == 40 and (workdir / "checkpoints" / "40").is_dir()
    assert result["eval_accuracy_clean"] == 1.0
    assert result["loss"] < math.log(2) and result["eval_loss"] < math.log(2)
    family = get_family(config)
    assert family.is_discriminator and family.num_classes == 0
    train_fakes, held_out = family._fake_pools
    assert len(train_fakes) == 54 and len(held_out) == 6  # a tenth held out


def test_the_discriminator_loss_weighs_real_and_generated_alike(tmp_path):
    """As many generated images as real ones per batch: a constant logit c scores
    (softplus(-c) + softplus(c)) / 2 and is right on exactly half."""
    family = get_family(_discriminator_config(_noise_fakes(tmp_path / "f.npz")))
    batch = {"image": jnp.zeros((8, 8, 8, 1))}
    loss, accuracy = family._discriminator_loss(lambda x, t: jnp.full((len(x), 1), 2.0),
                                                jax.random.PRNGKey(0), batch)
    np.testing.assert_allclose(loss, (jax.nn.softplus(-2.0) + jax.nn.softplus(2.0)) / 2,
                               rtol=1e-6)
    assert accuracy == 0.5


def test_discriminator_guidance_moves_unconditional_samples_and_scale_zero_does_not(
    discriminator_run
):
    """The trained discriminator guides the tiny unconditional model: no labels, the
    same nfe; scale 0 gives the unguided samples."""
    _, workdir, _ = discriminator_run
    from training import inference

    # Guidance needs the checkpoint only, not the generated images it was trained on.
    moved = _discriminator_config("")
    disc_family, disc_state, _ = inference.restore_classifier(
        tiny_guided.get_config("plain"), moved, workdir)
    disc_params = disc_family.sample_params(disc_state)
    plain = get_family(tiny_guided.get_config("plain"))
    params = _perturbed(plain.init_params(jax.random.PRNGKey(0)))
    key = jax.random.PRNGKey(3)
    unguided, nfe = plain.make_sampler(R(3, steps=2))(params, key)
    samples = {}
    for scale in (0.0, 5.0):
        draw = plain.make_sampler(R(3, steps=2, classifier_scale=scale), classifier=disc_family)
        samples[scale], guided_nfe = draw(params, key, classifier_params=disc_params)
        assert guided_nfe == nfe
    np.testing.assert_allclose(samples[0.0], unguided, atol=1e-5)
    assert np.max(np.abs(np.asarray(samples[5.0]) - np.asarray(unguided))) > 1e-3
    with pytest.raises(UserError, match="the discriminator tells data from unconditional"):
        get_family(tiny_guided.get_config("cond")).make_sampler(R(3), classifier=disc_family)
    with pytest.raises(UserError, match="a discriminator has no class probabilities"):
        disc_family.log_prob_fn(disc_params)
    with pytest.raises(UserError, match="a class label needs a label classifier; this one "
                                        "is a discriminator"):
        inference.make_generator(plain, R(3, labels=4, classifier_scale=1.0),
                                 classifier=(disc_family, disc_state))
    labels_classifier = tiny_guided.get_config("classifier")
    with pytest.raises(UserError, match=r"classifier\.objective: 'discriminator' in "
                                        r"checkpoint vs 'labels' now"):
        inference.restore_classifier(tiny_guided.get_config("plain"), labels_classifier,
                                     workdir)


@pytest.mark.parametrize(
    "objective, fakes, message",
    [
        ("discriminator", "", r"training a discriminator \(classifier.objective="
                              r"'discriminator'\) needs classifier.fake_samples"),
        ("labels", "x.npz", "classifier.fake_samples is for classifier.objective="),
        ("critic", "", "classifier.objective='critic' is not one of"),
        ("discriminator", "missing.npz", "samples file not found"),
        ("discriminator", "few.npz", "holds 5 samples; a discriminator needs at least 20"),
        ("discriminator", "big.npz", r"images have shape \(30, 16, 16, 1\), expected"),
    ],
)
def test_a_bad_discriminator_config_is_refused_in_one_line(tmp_path, objective, fakes,
                                                           message):
    _noise_fakes(tmp_path / "few.npz", num=5)
    _noise_fakes(tmp_path / "big.npz", num=30, shape=(16, 16, 1))
    config = _discriminator_config(str(tmp_path / fakes) if fakes else "")
    with config.unlocked():
        config.classifier.objective = objective
    workdir = tmp_path / "run"
    with pytest.raises(UserError, match=message):
        loop.run(config, workdir, devices=ONE_DEVICE)
    assert not workdir.exists()


def test_classifier_settings_in_a_diffusion_run_are_refused():
    config = tiny_guided.get_config("plain")
    with config.unlocked():
        config.classifier.objective = "discriminator"
    with pytest.raises(UserError, match=r"config\.classifier\.objective is a setting of "
                                        r"model\.family='noise_classifier'"):
        get_family(config)


def _png(path, pixels: np.ndarray):
    Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(path)
    return path


def test_guided_inpainting_keeps_known_pixels_and_writes_the_requested_labels(
    cond_run, classifier_run, tmp_path
):
    """Inpainting with classifier-free and classifier guidance towards one class: one
    sample.py call (one compile) for every conditioning at once."""
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
    image = _png(tmp_path / "in.png", original)
    known = np.zeros((8, 8, 1), np.uint8)
    known[:, :4] = 255  # left half known
    mask = _png(tmp_path / "mask.png", known)
    out = tmp_path / "guided.npz"
    proc = _run(
        "sample.py", f"--config={GUIDED}:cond", f"--workdir={cond_run}", "--num_samples=3",
        "--steps=1", "--class_label=3", "--guidance_scale=1.5", f"--image={image}",
        f"--mask={mask}", f"--classifier_workdir={classifier_run[0]}",
        f"--classifier_config={GUIDED}:classifier", "--classifier_scale=2", f"--out={out}",
    )
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as npz:
        assert npz["images"].dtype == np.uint8 and npz["images"].shape == (3, 8, 8, 1)
        np.testing.assert_array_equal(npz["images"][:, :, :4], np.stack([original[:, :4]] * 3))
        assert npz["labels"].dtype == np.int32
        np.testing.assert_array_equal(npz["labels"], [3, 3, 3])
        assert str(npz["task"]) == "inpaint" and str(npz["mask_path"]) == str(mask)
        assert float(npz["guidance_scale"]) == 1.5 and float(npz["classifier_scale"]) == 2.0
        assert str(npz["sampler"]).endswith(" + classifier guidance (scale 2)")
        np.testing.assert_array_equal(npz["input_image"], original)
        np.testing.assert_array_equal(npz["input_mask"], known // 255)
    assert out.with_suffix(".png").is_file()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--class_label=10"], "--class_label 10 is out of range: the classes are 0..9"),
        (["--class_label=-1"], "--class_label -1 is out of range: the classes are 0..9"),
        (["--guidance_scale=-1"], "--guidance_scale must be >= 0, got -1.0"),
        (["--classifier_workdir=nowhere"], "needs both --classifier_workdir and"),
        (["--config.training.class_dropout=0", "--guidance_scale=1"],
         "needs a model trained with training.class_dropout > 0"),
        (["--autoguidance_scale=1"], "--autoguidance_scale needs an autoguide"),
        (["--autoguide_workdir=x", "--autoguidance_scale=-2"],
         "--autoguidance_scale must be >= 0, got -2.0"),
    ],
)
def test_bad_conditional_request_is_one_line_and_writes_nothing(tmp_path, flags, message):
    out = tmp_path / "out" / "s.npz"
    proc = _run("sample.py", f"--config={GUIDED}:cond", f"--workdir={tmp_path}", *flags,
                f"--out={out}")
    assert proc.returncode == 2  # a flag error
    assert message in _error_line(proc, status=2)
    assert not out.parent.exists()


def test_the_experiment_configs_build_their_families():
    from configs import digits_discriminator, digits_noise_classifier, digits_vp, digits_vp_cond

    cond_config = digits_vp_cond.get_config()
    cond = get_family(cond_config)
    assert (cond.num_classes, cond.null_label, cond.class_dropout) == (10, 10, 0.1)
    # Otherwise the digits_vp recipe, at the 4,000 steps its figures were measured at.
    plain = digits_vp.get_config()
    assert (cond_config.training.n_iters, plain.training.n_iters) == (4000, 2600)
    with cond_config.unlocked():
        cond_config.model.num_classes, cond_config.training.class_dropout = 0, 0.0
        cond_config.training.n_iters = plain.training.n_iters
    assert cond_config.to_dict() == plain.to_dict()
    classifier = get_family(digits_noise_classifier.get_config())
    assert classifier.num_classes == 10 and classifier.data_shape == (8, 8, 1)
    # The discriminator is the same network and recipe with one logit.
    discriminator = digits_discriminator.get_config()
    assert discriminator.classifier.objective == "discriminator"
    with discriminator.unlocked():
        discriminator.classifier.objective = "labels"
    assert discriminator.to_dict() == digits_noise_classifier.get_config().to_dict()


def test_evaluate_scores_a_conditional_model_on_the_labels_it_drew(cond_run):
    """evaluate.py samples a conditional model with balanced labels and reports how many
    samples the digits classifier assigns to the class that was asked for."""
    report = eval_hook.evaluate(tiny_guided.get_config("cond"), cond_run, which=("cs",),
                             num_samples=20)
    model = report["model"]
    assert 0.0 <= model["conditional_accuracy"] <= 1.0
    assert sum(model["class_counts"]) == 20


def test_autoguidance_by_the_model_itself_changes_nothing_and_a_weaker_guide_does(cond_family):
    """(1 + w) s - w s_guide: a guide with the model's own weights gives the unguided
    samples; other weights move them. The guide gets the model's labels."""
    params = _perturbed(cond_family.init_params(jax.random.PRNGKey(0)))
    weaker = _perturbed(params, seed=1)
    key, labels = jax.random.PRNGKey(4), np.array([1, 2, 3], np.int32)
    guided = cond_family.make_sampler(R(3, steps=2, autoguidance_scale=2.0), guide=cond_family)
    plain, nfe = cond_family.make_sampler(R(3, steps=2))(params, key, labels)
    same, guided_nfe = guided(params, key, labels, guide_params=params)
    moved, _ = guided(params, key, labels, guide_params=weaker)
    np.testing.assert_allclose(same, plain, atol=1e-4)
    assert np.max(np.abs(np.asarray(moved) - np.asarray(plain))) > 1e-2
    assert guided_nfe == nfe == 3
    with pytest.raises(UserError, match="guide_params go with a guide"):
        guided(params, key, labels)
    with pytest.raises(UserError, match="autoguidance and classifier-free guidance"):
        cond_family.make_sampler(R(3, steps=2, guidance_scale=1.0), guide=cond_family)
    with pytest.raises(UserError, match=r"autoguide has model\.num_classes=0, the model 10"):
        cond_family.make_sampler(R(3), guide=get_family(tiny_guided.get_config("plain")))


def test_an_autoguide_of_other_data_or_another_sde_is_refused(tmp_path):
    from training import inference

    model = tiny_guided.get_config("cond")
    guide = tiny_guided.get_config("cond")
    with guide.unlocked():
        guide.model.beta_max = 10.0
        guide.data.image_size = 16
    with pytest.raises(UserError, match=r"guide vs model: data.image_size=16 vs 8; "
                                        r"model.beta_max=10.0 vs 20.0"):
        inference.restore_guide(model, guide, tmp_path)
    with pytest.raises(UserError, match=r"autoguide config is of model\.family='gan'"):
        inference.restore_guide(model, tiny_families.get_config("gan"), tmp_path)


def test_an_autoguide_that_is_the_model_itself_is_one_line_and_writes_nothing(cond_run,
                                                                              tmp_path):
    out = tmp_path / "out" / "s.npz"
    proc = _run("sample.py", f"--config={GUIDED}:cond", f"--workdir={cond_run}",
                "--autoguide_step=2", "--num_samples=2", "--steps=1", f"--out={out}")
    assert proc.returncode == 2
    assert "the autoguide is the model itself (step 2 of" in _error_line(proc, status=2)
    assert not out.parent.exists()


def test_a_sampler_named_without_steps_keeps_its_own_default(cond_family):
    """The config's step count (sampling.steps) belongs to the config's sampler only."""
    shape = (2, *cond_family.data_shape)
    edm = cond_family._plain_sampler(shape, "edm_heun", None)
    assert edm(jax.random.PRNGKey(0), lambda x, t: -x)[1] == 2 * 18 + 1
    own = cond_family._plain_sampler(shape, cond_family.config.sampling.method, None)
    steps = cond_family.config.sampling.steps
    assert own(jax.random.PRNGKey(0), lambda x, t: -x)[1] == steps + 1


def test_a_named_sampler_reads_its_options_from_the_config(cond_family):
    """`sample.py --sampler dpm_solver_pp --config.sampling.eta=1` is SDE-DPM-Solver++:
    the options of the named sampler that the config sets reach it; unset ones keep the
    sampler's defaults."""
    shape = (2, *cond_family.data_shape)
    config = tiny_guided.get_config("cond")
    with config.unlocked():
        config.sampling.eta = 1.0
    with_eta = get_family(config)
    key, score_fn = jax.random.PRNGKey(0), lambda x, t: -x
    plain = cond_family._plain_sampler(shape, "dpm_solver_pp", 3)(key, score_fn)[0]
    stochastic = with_eta._plain_sampler(shape, "dpm_solver_pp", 3)(key, score_fn)[0]
    direct = sampling.get_sampler(
        "dpm_solver_pp", with_eta.sde, shape, steps=3, eps=config.sampling.eps,
        denoise=config.sampling.noise_removal, eta=1.0,
    )(key, score_fn)[0]
    np.testing.assert_allclose(stochastic, direct, rtol=1e-6, atol=1e-6)
    assert not np.allclose(plain, stochastic, atol=1e-3)
