"""The VAE family (training, the ELBO and IWAE bounds in bits/dim and nats on the whole
test split, TensorBoard, sampling from the prior, the Bernoulli decoder, exact resume) and
latent diffusion on top of a trained VAE (the latent scale from data, decoded samples, the
refusals, exact resume), with one tiny VAE trained per module in-process and one through
train.py for the three CLIs."""

import json
import math
import shutil

import jax
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from data import pipeline
from errors import UserError
from evaluation import bpd
from tests.configs import tiny_families
from tests.resume_runs import straight_and_resumed
from tests.test_cli import ROOT, _error_line, _run
from training import images as image_utils
from training import inference, loop
from training.families import get_family
from training.families.request import SampleRequest as R
from vae import elbo

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
def vae_report(vae_run):
    """The bits/dim report of the tiny VAE (both bounds on the whole test split)."""
    config = tiny_families.get_config("vae")
    family, state, _ = inference.restore_latest(config, vae_run[0])
    return family, bpd.bits_per_dim(config, family, state)


@pytest.fixture(scope="module")
def vae_cli_run(tmp_path_factory):
    """A tiny VAE trained by train.py, as a user trains one."""
    workdir = tmp_path_factory.mktemp("vae_cli")
    proc = _run("train.py", f"--config={FAMILIES}:vae", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr
    assert "elbo_bpd=" in proc.stderr and "elbo_nats=" in proc.stderr
    return workdir


def _bits(nats: float, family) -> float:
    return nats / (family.num_dims * math.log(2.0))


def _restored_leaves(config, workdir):
    family, state, step = inference.restore_latest(config, workdir)
    return family, step, jax.tree.leaves(jax.device_get(state))


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


def test_the_elbo_is_reported_in_nats_and_bits_per_dim_alike(vae_run, vae_report):
    """Both units are of the negated bound (lower is better): bits/dim = nats / (D ln 2)."""
    _, result = vae_run
    family, report = vae_report
    assert family.num_dims == 8 * 8 * 1
    # Training and held-out: the negated ELBO in nats per image is reconstruction + KL.
    np.testing.assert_allclose(result["elbo_nats"], result["recon"] + result["kl"], rtol=1e-5)
    for prefix in ("", "eval_"):
        nats = result[f"{prefix}elbo_nats"]
        assert nats > 0
        np.testing.assert_allclose(result[f"{prefix}elbo_bpd"], _bits(nats, family), rtol=1e-5)
    # The evaluation report: both bounds, means and standard errors, in both units.
    for bits_key, nats_key in (("bpd", "iwae_nats"), ("elbo_bpd", "elbo_nats")):
        assert report[nats_key] > 0 and report[f"{nats_key}_sem"] > 0
        np.testing.assert_allclose(report[bits_key], _bits(report[nats_key], family),
                                   rtol=1e-12)
        np.testing.assert_allclose(report[f"{bits_key}_sem"],
                                   _bits(report[f"{nats_key}_sem"], family), rtol=1e-12)
        # The sign convention of vae.elbo.bits_per_dim, which takes log-probabilities.
        np.testing.assert_allclose(
            float(elbo.bits_per_dim(-report[nats_key], family.num_dims)), report[bits_key],
            rtol=1e-6)
    assert report["iwae_nats"] < report["elbo_nats"]


def test_bits_per_dim_reports_both_bounds_on_every_test_image(vae_report):
    family, report = vae_report
    config = family.config
    n_test = len(pipeline.read_split(config.data, "test")["label"])
    assert report["bpd_settings"]["n_test"] == n_test
    assert report["bpd_settings"]["method"] == "importance-weighted bound, k=4"
    # The importance-weighted bound is tighter (fewer bits) than the ELBO.
    assert 0 < report["bpd"] < report["elbo_bpd"] < 16


def test_prior_samples_and_the_refusals(vae_run):
    family = get_family(tiny_families.get_config("vae"))
    state = family.init_state(jax.random.PRNGKey(0))
    assert family.latent_shape == (4, 4, 2)
    images, nfe = family.make_sampler(R(3))(family.sample_params(state), jax.random.PRNGKey(0))
    assert images.shape == (3, 8, 8, 1) and nfe == 1
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    with pytest.raises(UserError, match=r"one generator call: --sampler"):
        family.make_sampler(R(3, sampler="ode"))
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


@pytest.fixture(scope="module")
def latent_runs(latent_config, vae_run, tmp_path_factory):
    """A tiny latent model on a copy of the VAE's run, trained 2 steps straight and 1 + 1
    resumed (`_straight_and_resumed`): (its config, the straight run's workdir, the
    straight and resumed families). The VAE copy is deleted by the test that samples."""
    root = tmp_path_factory.mktemp("latent")
    shutil.copytree(vae_run[0], root / "vae")
    config = latent_config.copy_and_resolve_references()
    config.latent.vae_workdir = str(root / "vae")
    straight, resumed = _straight_and_resumed(config, root)
    return config, root / "straight", straight, resumed


def test_latent_diffusion_trains_and_decodes_its_samples(latent_runs):
    latent_config, workdir, _, _ = latent_runs
    family, state, _ = inference.restore_latest(latent_config, workdir)
    images, nfe = inference.generate(family, state, R(5))
    assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8
    assert nfe == latent_config.sampling.steps + 1
    with pytest.raises(UserError, match="latent diffusion model has the likelihood of its "
                                        "latents only"):
        bpd.bits_per_dim(latent_config, family, state)
    with pytest.raises(UserError, match="inpainting, colorization, SDEdit"):
        family.make_sampler(R(2, task="sdedit", edit_strength=0.5, image=np.zeros((8, 8, 1))))
    # The run's checkpoints carry the VAE (its newest step, 2) and the latent scale: the
    # VAE's workdir is not needed to sample, and nothing was written into the config.
    assert json.loads((workdir / "config.json").read_text())["latent"]["vae_step"] is None
    shutil.rmtree(latent_config.latent.vae_workdir)
    family, state, _ = inference.restore_latest(latent_config, workdir)
    assert family.vae_step == 2
    again, _ = inference.generate(family, state, R(5))
    np.testing.assert_array_equal(again, images)


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


def test_tensorboard_gets_the_loss_terms_the_elbo_and_the_sample_grid(vae_run):
    workdir, result = vae_run
    events = EventAccumulator(str(workdir))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss", "kl", "recon", "kl_weight", "grad_norm", "elbo_bpd", "elbo_nats",
            "eval_elbo_bpd", "eval_elbo_nats", "eval_kl"} <= scalars, scalars
    for name in ("elbo_bpd", "elbo_nats", "eval_elbo_nats"):
        logged = events.Scalars(name)
        assert [e.step for e in logged] == [1, 2], name
        np.testing.assert_allclose(logged[-1].value, result[name], rtol=1e-6)
    # One grid per snapshot (snapshot_freq 1), the same picture as the PNG beside it.
    grids = events.Images("samples")
    assert [e.step for e in grids] == [1, 2]
    with Image.open(workdir / "samples" / "step_0000002.png") as png:
        assert (grids[-1].width, grids[-1].height) == png.size


def test_a_bernoulli_vae_trains_on_binarised_data_and_samples_decoder_means(tmp_path):
    config = tiny_families.get_config("vae")
    config.vae.likelihood = "bernoulli"
    config.training.n_iters = 1
    config.training.snapshot_freq = 1
    result = loop.run(config, tmp_path, devices=ONE_DEVICE)
    # Probabilities of binary pixels: a non-negative reconstruction cost, at most ln 2 per
    # pixel from a decoder that barely moved from its initial logits near 0.
    assert 0 < result["recon"] < 1.5 * 64 * math.log(2.0)
    np.testing.assert_allclose(result["elbo_nats"], result["recon"] + result["kl"], rtol=1e-5)
    assert (tmp_path / "samples" / "step_0000001.png").is_file()
    family, state, _ = inference.restore_latest(config, tmp_path)
    assert family.params_per_channel == 1
    images, nfe = inference.generate(family, state, R(6, seed=3))
    assert images.shape == (6, 8, 8, 1) and images.dtype == np.uint8 and nfe == 1
    # What the family documents: the decoder's mean of a prior draw, i.e. the Bernoulli
    # probabilities sigmoid(logits) as grey levels, not binary draws.
    z = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(3), 0),
                          (6, *family.latent_shape))
    logits = family._decode_out(family.sample_params(state), z)
    expected = image_utils.to_uint8(jax.nn.sigmoid(logits))
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1
    assert len(np.unique(images)) > 2


def _straight_and_resumed(config, tmp_path):
    """2 steps straight, and 1 step then 1 resumed step: the two restored runs, after
    checking that every leaf of their states (parameters, EMA, optimiser moments, step,
    key) is equal."""
    straight_and_resumed(config, tmp_path, ONE_DEVICE, n_iters=2, stop_at=1)
    straight_family, step, straight = _restored_leaves(config, tmp_path / "straight")
    resumed_family, resumed_step, resumed = _restored_leaves(config, tmp_path / "resumed")
    assert step == resumed_step == 2
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    return straight_family, resumed_family


def test_a_resumed_vae_continues_exactly(tmp_path):
    _straight_and_resumed(tiny_families.get_config("vae"), tmp_path)


def test_a_resumed_latent_model_continues_exactly_with_the_same_latent_scale(latent_runs):
    _, _, straight, resumed = latent_runs  # every leaf equal: _straight_and_resumed
    # The scale is recomputed from the data at every restore: it must come out the same,
    # or the restored model would diffuse latents of another size than it was trained on.
    assert resumed.latent_scale == straight.latent_scale
    assert resumed.vae_step == straight.vae_step == 2


def test_a_vae_trains_samples_and_evaluates_through_the_clis(vae_cli_run, tmp_path):
    workdir, spec = vae_cli_run, f"--config={FAMILIES}:vae"
    assert (workdir / "checkpoints" / "2").is_dir()
    assert (workdir / "samples" / "step_0000002.png").is_file()
    out = tmp_path / "vae.npz"
    proc = _run("sample.py", spec, f"--workdir={workdir}", "--num_samples=5", f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as npz:
        assert npz["images"].shape == (5, 8, 8, 1) and npz["images"].dtype == np.uint8
        assert int(npz["step"]) == 2 and int(npz["nfe"]) == 1
        assert str(npz["sampler"]) == "decoder mean of a prior draw (one call)"
    assert out.with_suffix(".png").is_file()
    proc = _run("sample.py", spec, f"--workdir={workdir}", "--guidance_scale=1",
                f"--out={tmp_path / 'no.npz'}")
    assert proc.returncode == 2
    assert "one generator call: --guidance_scale do(es) not apply" in _error_line(proc, status=2)
    assert not (tmp_path / "no.npz").exists()
    proc = _run("evaluate.py", spec, f"--workdir={workdir}", "--metrics=cs,bpd",
                "--num_samples=20")
    assert proc.returncode == 0, proc.stderr
    for label in ("bits/dim", "nats/image", "ELBO bits/dim", "ELBO nats/image"):
        assert f"\n{label} " in proc.stdout, proc.stdout
    report = json.loads((workdir / "metrics.json").read_text())
    assert report["checkpoint_step"] == 2 and report["samples"]["n_fake"] == 20
    model = report["model"]
    assert {"classifier_score", "bpd", "bpd_sem", "elbo_bpd", "elbo_bpd_sem", "iwae_nats",
            "iwae_nats_sem", "elbo_nats", "elbo_nats_sem"} <= set(model), model
    assert model["iwae_nats"] < model["elbo_nats"]


def test_a_latent_model_on_a_cli_trained_vae_through_the_clis(vae_cli_run, tmp_path):
    workdir = tmp_path / "latent"
    spec = f"--config={FAMILIES}:latent"
    vae = f"--config.latent.vae_workdir={vae_cli_run}"
    proc = _run("train.py", spec, vae, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr
    assert "latent scale 1/" in proc.stderr
    assert (workdir / "checkpoints" / "2").is_dir()
    assert (workdir / "samples" / "step_0000002.png").is_file()
    out = tmp_path / "latent.npz"
    proc = _run("sample.py", spec, vae, f"--workdir={workdir}", "--num_samples=3",
                f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as npz:
        # Decoded to the data's shape, not the 4x4x2 latents.
        assert npz["images"].shape == (3, 8, 8, 1) and npz["images"].dtype == np.uint8
        assert int(npz["step"]) == 2
    assert out.with_suffix(".png").is_file()
    proc = _run("evaluate.py", spec, vae, f"--workdir={workdir}", "--metrics=cs,bpd")
    assert proc.returncode == 2
    assert "likelihood of its latents only" in _error_line(proc, status=2)
    assert not (workdir / "metrics.json").exists()
    proc = _run("evaluate.py", spec, vae, f"--workdir={workdir}", "--metrics=cs",
                "--num_samples=20")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((workdir / "metrics.json").read_text())
    assert report["samples"]["step"] == 2 and report["samples"]["n_fake"] == 20
    assert report["model"]["classifier_score"] >= 1.0


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
    images, _ = family.make_sampler(R(3, sampler="euler_maruyama", steps=2))(
        family.sample_params(new), jax.random.PRNGKey(1))
    assert images.shape == (3, 8, 8, 1)


def test_the_notebook_api_gives_the_vae_its_importance_weighted_bound(vae_run, vae_report):
    import scoregen

    _, report = vae_report
    model = scoregen.load(vae_run[0], devices=ONE_DEVICE)
    test = pipeline.read_split(model.config.data, "test")["image"]
    bits = model.bits_per_dim(test)
    assert bits.shape == (len(test),)
    # Other keys than evaluate.py's: the same bound up to its sampling noise.
    np.testing.assert_allclose(bits.mean(), report["bpd"], rtol=0.02)
