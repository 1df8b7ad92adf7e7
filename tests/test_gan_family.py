"""The GAN family: one jitted step for both networks (one compile, on 1 and 8 devices),
DiffAugment on real and fake, exact resume, the generator EMA, conditional sampling, the
guards (a family/network mismatch, diffusion settings, uncentred data, a generator of the
wrong shape, a non-finite discriminator loss), and the three CLIs with their TensorBoard
events."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from errors import NonFiniteLossError, UserError
from gan import ema, losses
from networks import gan as gan_networks
from tests.configs import tiny, tiny_families
from tests.resume_runs import straight_and_resumed
from tests.test_cli import ROOT, _error_line, _run
from training import inference, loop
from training.families import get_family
from training.families.request import SampleRequest as R

ONE_DEVICE = jax.devices()[:1]
FAMILIES = str(ROOT / "tests" / "configs" / "tiny_families.py")


def _batch(family, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = (16, *family.data_shape)
    return {"image": jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32)}


@pytest.mark.parametrize("kind, devices", [("gan", 8), ("gan_sn", 2)])
def test_one_step_on_one_and_several_devices_gives_the_same_losses(tmp_path, kind, devices):
    """DCGAN on eight devices, and the ResNet pair whose spectral-norm state and DiffAugment
    ride along on two (the same sharded code at a quarter of the compile time)."""
    config = tiny_families.get_config(kind)
    config.training.n_iters = 1
    config.training.snapshot_sampling = False
    one = loop.run(config, tmp_path / "one", devices=ONE_DEVICE)
    several = loop.run(config, tmp_path / "several", devices=jax.devices()[:devices])
    for name in ("d_loss", "g_loss", "real_logit", "fake_logit", "r1"):
        assert np.isfinite(one[name]), name
        np.testing.assert_allclose(one[name], several[name], rtol=2e-4, atol=1e-5)
    # The lazy penalties ran at step 0 (reg_interval 2).
    assert one["r1"] > 0
    assert (tmp_path / "one" / "checkpoints" / "1").is_dir()


def test_a_resumed_run_continues_exactly(tmp_path):
    straight, resumed = straight_and_resumed(tiny_families.get_config("gan"), tmp_path,
                                             ONE_DEVICE, n_iters=3, stop_at=2)
    for name in ("d_loss", "g_loss", "real_logit"):
        np.testing.assert_allclose(resumed[name], straight[name], rtol=1e-5)


def test_the_step_trains_both_networks_and_the_ema_follows_its_half_life():
    """The ResNet pair with spectral norm, hinge loss, R1 + R2 and DiffAugment."""
    config = tiny_families.get_config("gan_sn")
    family = get_family(config)
    state = family.init_state(jax.random.PRNGKey(0))
    new, metrics = jax.jit(family.train_step)(state, _batch(family))
    changed = lambda a, b: any(not np.allclose(x, y) for x, y in
                               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    assert changed(state.params, new.params)
    assert changed(state.aux["d_params"], new.aux["d_params"])
    # Spectral norm's power-iteration vectors are carried in the state and move.
    assert changed(state.aux["d_state"], new.aux["d_state"])
    beta = 0.5 ** (16 / config.gan.ema_halflife_images)
    np.testing.assert_allclose(float(ema.ema_beta(16, config.gan.ema_halflife_images)), beta)
    for e0, p1, e1 in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(new.params),
                          jax.tree.leaves(new.ema_params), strict=True):
        np.testing.assert_allclose(e1, beta * e0 + (1 - beta) * p1, rtol=1e-5, atol=1e-6)
    assert int(new.step) == 1 and np.isfinite(metrics["d_grad_norm"])


def test_both_networks_update_in_one_compiled_step_with_or_without_the_lazy_penalty():
    family = get_family(tiny_families.get_config("gan_sn"))  # R1 and R2 every 2 steps
    traces = []

    def counted(state, batch):
        traces.append(1)
        return family.train_step(state, batch)

    step = jax.jit(counted)
    state = family.init_state(jax.random.PRNGKey(0))
    penalised = []
    for seed in range(3):
        state, metrics = step(state, _batch(family, seed))
        penalised.append(float(metrics["r1"]) > 0 and float(metrics["r2"]) > 0)
    assert penalised == [True, False, True]
    assert len(traces) == 1


def test_diffaugment_reaches_the_real_and_the_fake_images():
    """With the same seeds and weights, the policy changes what D sees of the real images
    and of the fakes, and what G is trained against."""
    plain = tiny_families.get_config("gan_sn")
    plain.gan.augment = ""
    outcomes = []
    for config in (plain, tiny_families.get_config("gan_sn")):
        family = get_family(config)
        _, metrics = jax.jit(family.train_step)(family.init_state(jax.random.PRNGKey(0)),
                                                _batch(family))
        outcomes.append({k: float(metrics[k]) for k in ("real_logit", "fake_logit", "g_loss")})
    for name in ("real_logit", "fake_logit", "g_loss"):
        assert abs(outcomes[0][name] - outcomes[1][name]) > 1e-6, name


def test_a_gan_refuses_diffusion_settings_and_uncentered_data():
    config = tiny_families.get_config("gan")
    config.training.sde = "vesde"
    with pytest.raises(UserError, match=r"config.training.sde is a setting of model.family "
                                        r"'diffusion', 'latent_diffusion', 'noise_classifier', "
                                        r"'text_diffusion', 'consistency', "
                                        r"'progressive_distillation', 'reflow' only; this run is "
                                        r"model.family='gan'"):
        get_family(config)
    config = tiny_families.get_config("gan")
    config.sampling.steps = 10
    with pytest.raises(UserError, match=r"config.sampling.steps is a setting"):
        get_family(config)
    config = tiny_families.get_config("gan")
    config.model.ema_rate = 0.99  # a GAN's EMA is a half-life in images
    with pytest.raises(UserError, match=r"config.model.ema_rate is a setting of model.family "
                                        r".*'vae'.* only; this run is model.family='gan'"):
        get_family(config)
    vae_with_gan_depth = tiny_families.get_config("vae")
    vae_with_gan_depth.model.convs_per_stage = 2
    with pytest.raises(UserError, match=r"config.model.convs_per_stage is a setting of "
                                        r"model.family='gan'; this run is model.family='vae'"):
        get_family(vae_with_gan_depth)
    config = tiny_families.get_config("gan")
    config.data.centered = False
    with pytest.raises(UserError, match=r"draws images in \[-1, 1\]: it takes "
                                        r"data.centered=True, got False"):
        get_family(config)


def test_a_conditional_generator_draws_the_labels_it_is_given():
    family = get_family(tiny_families.get_config("gan_cond"))
    state = family.init_state(jax.random.PRNGKey(0))
    sample = family.make_sampler(R(4))
    params, key = family.sample_params(state), jax.random.PRNGKey(1)
    threes, nfe = sample(params, key, labels=3)
    sevens, _ = sample(params, key, labels=7)
    assert nfe == 1 and threes.shape == (4, 8, 8, 1)
    assert float(threes.min()) >= 0.0 and float(threes.max()) <= 1.0
    assert not np.allclose(threes, sevens)
    with pytest.raises(UserError, match="class label 10 is out of range"):
        sample(params, key, labels=10)
    with pytest.raises(UserError, match=r"one generator call: --steps"):
        family.make_sampler(R(4, steps=10))
    with pytest.raises(UserError, match=r"task 'inpaint'"):
        family.make_sampler(R(4, task="inpaint",
                              image=np.zeros((8, 8, 1)), mask=np.ones((8, 8, 1))))


def test_a_family_network_mismatch_is_refused_by_name():
    diffusion_with_gan_net = tiny.get_config()
    diffusion_with_gan_net.model.name = "dcgan"
    with pytest.raises(UserError, match=r"'dcgan' is a GAN network; this run is "
                                        r"model.family='diffusion'"):
        get_family(diffusion_with_gan_net)
    discriminator_of_diffusion = tiny.get_config()
    discriminator_of_diffusion.gan.r1_gamma = 1.0
    with pytest.raises(UserError, match=r"config.gan.r1_gamma is a setting of "
                                        r"model.family='gan'"):
        get_family(discriminator_of_diffusion)
    gan_with_score_net = tiny_families.get_config("gan")
    gan_with_score_net.model.name = "ddpmpp"
    with pytest.raises(UserError, match=r"model.family='gan' takes model.name in"):
        get_family(gan_with_score_net)
    bad_loss = tiny_families.get_config("gan")
    bad_loss.gan.loss = "wasserstein"
    with pytest.raises(UserError, match=r"unknown GAN loss 'wasserstein'"):
        get_family(bad_loss)


def test_a_generator_of_the_wrong_output_shape_is_refused(monkeypatch):
    build = gan_networks.from_config

    def sixteen_pixels(config, rngs):
        config = config.copy_and_resolve_references()
        config.data.image_size = 16
        return build(config, rngs)

    monkeypatch.setattr(gan_networks, "from_config", sixteen_pixels)
    with pytest.raises(UserError, match=r"outputs images of shape \(16, 16, 1\) but the data "
                                        r"'digits' has shape \(8, 8, 1\)"):
        get_family(tiny_families.get_config("gan"))


def test_a_non_finite_discriminator_loss_stops_before_any_save(monkeypatch, tmp_path):
    d_loss, g_loss = losses.LOSSES["ns"]
    monkeypatch.setitem(losses.LOSSES, "ns", (lambda r, f: d_loss(r, f) * jnp.nan, g_loss))
    config = tiny_families.get_config("gan")
    with pytest.raises(NonFiniteLossError, match=r"d_loss became nan at step 1; .*no "
                                                 r"checkpoint was written"):
        loop.run(config, tmp_path, devices=ONE_DEVICE)
    assert not any((tmp_path / "checkpoints").iterdir())


def test_train_sample_evaluate_through_the_clis(tmp_path):
    workdir = tmp_path / "gan"
    spec = f"--config={FAMILIES}:gan_cond"
    proc = _run("train.py", spec, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr
    assert "d_loss=" in proc.stderr and "g_loss=" in proc.stderr
    assert (workdir / "samples" / "step_0000002.png").is_file()
    events = EventAccumulator(str(workdir))
    events.Reload()
    assert {"d_loss", "g_loss", "r1", "eval_d_loss"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("g_loss")] == [1, 2]
    assert "samples" in events.Tags()["images"]
    out = tmp_path / "fives.npz"
    proc = _run("sample.py", spec, f"--workdir={workdir}", "--num_samples=6",
                "--class_label=5", f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as npz:
        assert npz["images"].shape == (6, 8, 8, 1) and npz["images"].dtype == np.uint8
        assert npz["labels"].tolist() == [5] * 6
        assert str(npz["sampler"]) == "generator (one call)" and int(npz["nfe"]) == 1
    proc = _run("sample.py", spec, f"--workdir={workdir}", "--steps=5",
                f"--out={tmp_path / 'no.npz'}")
    assert proc.returncode == 2
    assert "one generator call: --steps" in _error_line(proc, status=2)
    assert not (tmp_path / "no.npz").exists()
    proc = _run("evaluate.py", spec, f"--workdir={workdir}", "--metrics=cs,bpd")
    assert proc.returncode == 2
    # The hint is the request without bpd.
    assert _error_line(proc, status=2).endswith("model family 'gan' has none; leave bpd out of the "
                                      "metrics (--metrics cs)")
    assert not (workdir / "metrics.json").exists()
    proc = _run("evaluate.py", spec, f"--workdir={workdir}", "--metrics=cs",
                "--num_samples=20")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((workdir / "metrics.json").read_text())
    assert report["samples"]["sampler"] == "generator (one call)"
    assert 0.0 <= report["model"]["conditional_accuracy"] <= 1.0


def test_restore_for_sampling_uses_the_ema_generator(tmp_path):
    config = tiny_families.get_config("gan")
    loop.run(config, tmp_path, devices=ONE_DEVICE)
    family, state, step = inference.restore_latest(config, tmp_path)
    assert step == 2
    ema_draw, _ = inference.generate(family, state, R(3))
    raw_draw, _ = inference.generate(family, state, R(3, use_ema=False))
    assert ema_draw.shape == (3, 8, 8, 1) and not np.array_equal(ema_draw, raw_draw)
