"""The VAE family (training, the ELBO and IWAE bounds in bits/dim on the whole test split,
sampling from the prior) and latent diffusion on top of a trained VAE (the latent scale
from data, decoded samples, the refusals), with one tiny VAE trained per module."""

import json

import jax
import numpy as np
import pytest

from data import pipeline
from evaluation import bpd
from tests.configs import tiny_families
from tests.test_cli import ROOT, _error_line, _run
from training import inference, loop
from training.errors import UserError
from training.families import get_family

ONE_DEVICE = jax.devices()[:1]
FAMILIES = str(ROOT / "tests" / "configs" / "tiny_families.py")


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("vae")
    config = tiny_families.get_config("vae")
    config.training.snapshot_freq = 1  # checkpoints 1 and 2: latent models pin one
    result = loop.run(config, workdir, devices=ONE_DEVICE)
    return workdir, result


@pytest.fixture(scope="module")
def latent_config(vae_run):
    config = tiny_families.get_config("latent")
    config.latent.vae_workdir = str(vae_run[0])
    return config


def test_training_reports_the_elbo_and_its_parts(vae_run):
    workdir, result = vae_run
    assert result["step"] == 2
    for name in ("loss", "elbo_bpd", "kl", "recon", "eval_elbo_bpd", "eval_kl"):
        assert np.isfinite(result[name]), name
    assert result["kl"] >= 0 and result["eval_kl"] >= 0
    # Warm-up over 2 steps: the KL weight of the second step is half of beta.
    assert result["kl_weight"] == pytest.approx(0.5)
    assert (workdir / "samples" / "step_0000002.png").is_file()


def test_bits_per_dim_reports_both_bounds_on_every_test_image(vae_run):
    workdir, _ = vae_run
    config = tiny_families.get_config("vae")
    family, state, _ = inference.restore_latest(config, workdir)
    report = bpd.bits_per_dim(config, family, state)
    n_test = len(pipeline.read_split(config.data, "test")["label"])
    assert report["bpd_settings"]["n_test"] == n_test
    assert report["bpd_settings"]["method"] == "importance-weighted bound, k=4"
    # The importance-weighted bound is tighter (fewer bits) than the ELBO.
    assert 0 < report["bpd"] < report["elbo_bpd"] < 16


def test_prior_samples_and_the_refusals(vae_run):
    family = get_family(tiny_families.get_config("vae"))
    state = family.init_state(jax.random.PRNGKey(0))
    assert family.latent_shape == (4, 4, 2)
    images, nfe = family.make_sampler(3)(family.sample_params(state), jax.random.PRNGKey(0))
    assert images.shape == (3, 8, 8, 1) and nfe == 1
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    with pytest.raises(UserError, match=r"one generator call: --sampler"):
        family.make_sampler(3, name="ode")
    bad = tiny_families.get_config("vae")
    bad.vae.likelihood = "poisson"
    with pytest.raises(UserError, match=r"config.vae.likelihood='poisson' is not one of"):
        get_family(bad)
    conditional = tiny_families.get_config("vae")
    conditional.model.num_classes = 10
    with pytest.raises(UserError, match="unconditional"):
        get_family(conditional)


def test_latent_scale_gives_unit_variance_latents(latent_config):
    family = get_family(latent_config)
    assert family.data_shape == (4, 4, 2) and family.image_shape == (8, 8, 1)
    images = pipeline.read_split(latent_config.data, "train")["image"] / np.float32(255.0)
    means = family.vae.encode_fn(family.vae_params)(2.0 * images - 1.0)[0]
    np.testing.assert_allclose(np.std(np.asarray(means) * family.latent_scale), 1.0, rtol=1e-3)


def test_latent_diffusion_trains_and_decodes_its_samples(latent_config, tmp_path):
    result = loop.run(latent_config, tmp_path, devices=ONE_DEVICE)
    assert np.isfinite(result["loss"]) and np.isfinite(result["eval_loss"])
    family, state, _ = inference.restore_latest(latent_config, tmp_path)
    images, nfe = inference.generate(family, state, 5)
    assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8
    assert nfe == latent_config.sampling.steps + 1
    with pytest.raises(UserError, match="latent diffusion model has the likelihood of its "
                                        "latents only"):
        bpd.bits_per_dim(latent_config, family, state)
    with pytest.raises(UserError, match="inpainting, colorization, SDEdit"):
        family.make_sampler(2, task="sdedit", edit_strength=0.5)
    # The run recorded the VAE checkpoint it encoded with; another one is refused.
    assert json.loads((tmp_path / "config.json").read_text())["latent"]["vae_step"] == 2
    pinned_elsewhere = latent_config.copy_and_resolve_references()
    pinned_elsewhere.latent.vae_step = 1
    with pytest.raises(UserError, match=r"trained on the VAE's checkpoint 2, not 1 .*"
                                        r"--config\.latent\.vae_step=2$"):
        inference.restore_latest(pinned_elsewhere, tmp_path)


def test_latent_diffusion_refuses_a_missing_or_mismatched_vae(latent_config, tmp_path):
    missing = latent_config.copy_and_resolve_references()
    missing.latent.vae_workdir = ""
    with pytest.raises(UserError, match=r"needs latent\.vae_config and latent\.vae_workdir"):
        get_family(missing)
    untrained = latent_config.copy_and_resolve_references()
    untrained.latent.vae_workdir = str(tmp_path)
    with pytest.raises(UserError, match="no checkpoints in"):
        get_family(untrained)
    no_step = latent_config.copy_and_resolve_references()
    no_step.latent.vae_step = 7
    with pytest.raises(UserError, match=r"no checkpoint at step 7 in .* \(it has \[1, 2\]\)"):
        get_family(no_step)
    other_data = latent_config.copy_and_resolve_references()
    other_data.data.centered = False
    with pytest.raises(UserError, match=r"other data: data.centered: True \(VAE\) vs False"):
        get_family(other_data)
    no_file = latent_config.copy_and_resolve_references()
    no_file.latent.vae_config = "configs/nonexistent.py"
    with pytest.raises(UserError, match=r"config file .configs/nonexistent\.py. does not exist"):
        get_family(no_file)


def test_evaluate_cli_prints_both_bounds(vae_run):
    workdir, _ = vae_run
    proc = _run("evaluate.py", f"--config={FAMILIES}:vae", f"--workdir={workdir}",
                "--metrics=bpd")
    assert proc.returncode == 0, proc.stderr
    assert "ELBO bits/dim" in proc.stdout and "bits/dim" in proc.stdout
    report = json.loads((workdir / "metrics.json").read_text())
    assert report["model"]["bpd"] < report["model"]["elbo_bpd"]
    proc = _run("sample.py", f"--config={FAMILIES}:vae", f"--workdir={workdir}",
                "--guidance_scale=1")
    assert proc.returncode == 1
    assert "needs a class-conditional model" in _error_line(proc)


def test_a_self_conditioned_latent_model_clusters_its_latents_and_samples_images(latent_config):
    config = latent_config.copy_and_resolve_references()
    config.model.self_condition_clusters = 4
    family = get_family(config)
    # The centres live where the model does: the scaled 4x4x2 latents.
    assert family.clusters.centres.shape == (4, 4 * 4 * 2)
    state = family.init_state(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = {"image": np.asarray(rng.uniform(-1, 1, (8, 8, 8, 1)), np.float32),
             "label": np.zeros((8,), np.int32)}
    new, metrics = jax.jit(family.train_step)(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    images, _ = family.make_sampler(3, name="euler_maruyama", steps=2)(
        family.sample_params(new), jax.random.PRNGKey(1))
    assert images.shape == (3, 8, 8, 1)
