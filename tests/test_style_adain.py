"""Feed-forward style transfer (AdaIN, `model.family='style_adain'`): the AdaIN operation,
the `photos` dataset's deterministic crop pairs, the mirrored decoder, a train step, a run
through the loop (checkpoint, TensorBoard scalars, snapshot grid), restore + stylize at any
size, alpha, and the refusals (sample.py in one line, settings that do not fit).

A VGG-shaped encoder with random weights stands in for the pinned style_cnn (registered as
'tiny_vgg' for this module), at 16x16 crops, batch 2, 2 steps."""

import re
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.default import get_default_config
from data import photos, pipeline
from errors import RequestError, UserError
from networks import adain
from style import feature_nets, feedforward
from tests import cli_zygote
from tests.test_cli import ROOT, _env, _error_line
from training import loop, stylize
from training.families import base, check_family_settings, get_family
from training.families.request import SampleRequest

ONE_DEVICE = jax.devices()[:1]
ENCODER = "tiny_vgg"


@pytest.fixture(scope="module", autouse=True)
def tiny_encoder():
    feature_nets.register(feedforward.vgg_shaped_network(ENCODER, (4, 8, 8, 16), (1, 1, 1, 1)))
    yield
    feature_nets.NETWORKS.pop(ENCODER, None)


def _config(**data):
    config = get_default_config()
    config.model.family = "style_adain"
    config.model.name = "adain"
    config.style.encoder = ENCODER
    d = config.data
    d.dataset, d.image_size, d.num_channels, d.centered = "photos", 16, 3, False
    d.num_synthetic_samples = 20  # a test split of 4 >= one batch: eval losses
    d.content_photos, d.style_photos = "astronaut,coffee", "gravel,colorwheel"
    for key, value in data.items():
        d[key] = value
    t = config.training
    t.batch_size, t.n_iters, t.log_freq, t.eval_freq = 2, 2, 1, 1
    t.snapshot_freq, t.snapshot_freq_for_preemption, t.num_snapshot_samples = 2, 1000, 3
    config.optim.warmup = 0
    config.optim.schedule = "constant"
    return config


# -- AdaIN and the decoder ---------------------------------------------------------------


def test_adain_gives_the_content_the_style_mean_and_std_exactly():
    rng = np.random.default_rng(0)
    content = jnp.asarray(rng.normal(3.0, 2.0, (2, 5, 7, 6)), jnp.float32)
    style = jnp.asarray(rng.normal(-1.0, 0.5, (2, 9, 4, 6)) * np.arange(1, 7), jnp.float32)
    out = adain.adain(content, style, eps=0.0)
    mean, std = adain.mean_std(out, eps=0.0)
    s_mean, s_std = adain.mean_std(style, eps=0.0)
    np.testing.assert_allclose(mean, s_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std, s_std, rtol=1e-5)
    # The normalised content is kept: AdaIN is an affine map per channel.
    c_mean, c_std = adain.mean_std(content, eps=0.0)
    np.testing.assert_allclose((out - s_mean) / s_std, (content - c_mean) / c_std, atol=1e-4)
    # With the paper's eps: sqrt(var(s) + eps) sigma(c) / sqrt(var(c) + eps).
    _, std = adain.mean_std(adain.adain(content, style), eps=0.0)
    _, s_std_eps = adain.mean_std(style)
    np.testing.assert_allclose(std, s_std_eps * c_std / jnp.sqrt(c_std**2 + adain.EPS),
                               rtol=1e-5)


def test_the_decoder_mirrors_the_encoder():
    network = feedforward.vgg_shaped_network("vgg_like", (64, 128, 256, 512), (2, 2, 4, 1))
    plan = adain.mirror_plan(network.abstract(None), network.layer_names, "relu4_1")
    convs = [(s.in_ch, s.out_ch, s.relu) for s in plan if not s.upsample]
    # The AdaIN paper's decoder for VGG-19 up to relu4_1.
    assert convs == [(512, 256, True), (256, 256, True), (256, 256, True), (256, 256, True),
                     (256, 128, True), (128, 128, True), (128, 64, True), (64, 64, True),
                     (64, 3, False)]
    assert [i for i, s in enumerate(plan) if s.upsample] == [1, 6, 9]
    assert adain.downsampling(plan) == 8
    # style.decoder_width scales the hidden widths only.
    wide = [(s.in_ch, s.out_ch) for s in adain.widen(plan, 0.5) if not s.upsample]
    assert wide[0] == (512, 128) and wide[1] == (128, 128) and wide[-1] == (32, 3)


# -- data --------------------------------------------------------------------------------


def test_the_photos_pipeline_is_deterministic_and_resumes():
    config = _config(random_flip=True)
    info = pipeline.get_info(config.data)
    assert info.shape == (16, 16, 3) and info.extra_images == ("style",)
    assert (info.num_train, info.num_test) == (20, 4)

    def batches(seed, n=3, state=None):
        it = pipeline.make_train_iterator(config.data, global_batch_size=2, seed=seed)
        if state is not None:
            it.set_state(state)
        return [next(it) for _ in range(n)], it.get_state()

    first, _ = batches(0)
    again, _ = batches(0)
    other, _ = batches(1)
    for a, b in zip(first, again, strict=True):
        assert sorted(a) == ["image", "label", "style"]
        assert a["image"].shape == a["style"].shape == (2, 16, 16, 3)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["style"], b["style"])
        assert 0.0 <= a["image"].min() and a["image"].max() <= 1.0
        assert not np.array_equal(a["image"], a["style"])
    assert not np.array_equal(first[0]["image"], other[0]["image"])
    # The iterator's state (what checkpoints store) continues the stream exactly.
    _, state = batches(0, n=2)
    resumed, _ = batches(0, n=1, state=state)
    np.testing.assert_array_equal(resumed[0]["style"], first[2]["style"])
    # A record is a pure function of its index and crops lie inside the named photos.
    records = photos.PairRecords("train", 20, 16, ("astronaut",), ("gravel",))
    np.testing.assert_array_equal(records[7]["image"], records[7]["image"])
    gravel = records[3]["style"]
    np.testing.assert_array_equal(gravel[..., 0], gravel[..., 2])  # grey photo, as RGB


def test_photo_names_are_checked_in_one_line():
    message = "config.data.style_photos: unknown photo 'mona'"
    with pytest.raises(UserError, match=re.escape(message)) as err:
        pipeline.get_info(_config(style_photos="gravel,mona").data)
    assert "astronaut, brick" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="has 3 channels"):
        pipeline.get_info(_config(num_channels=1).data)


# -- the family --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def family():
    return get_family(_config())


def _pairs(n=2, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.random((n, size, size, 3)), jnp.float32),
            jnp.asarray(rng.random((n, size, size, 3)), jnp.float32))


def test_a_train_step_has_finite_losses_and_moves_the_decoder(family):
    assert family.capabilities == {base.STYLIZE} and isinstance(family, base.Family)
    state = family.init_state(jax.random.PRNGKey(0))
    before = jax.tree.map(np.asarray, state.params)
    content, style = _pairs()
    new, metrics = jax.jit(family.train_step)(state, {"image": content, "style": style,
                                                       "label": jnp.zeros(2, jnp.int32)})
    for name in ("loss", "content_loss", "style_loss", "grad_norm"):
        assert np.isfinite(metrics[name]) and metrics[name] > 0, name
    np.testing.assert_allclose(metrics["loss"], metrics["content_loss"]
                               + 10.0 * metrics["style_loss"], rtol=1e-5)
    assert int(new.step) == 1
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: not np.allclose(a, b), before,
                                         new.params))
    assert sum(moved) > len(moved) / 2
    # The encoder is frozen: its weights are the statistics, not parameters.
    assert "encoder" in family.statistics and new.ema_params == {}


def test_alpha_zero_is_the_decoder_of_the_content_features(family):
    params = family.sample_params(family.init_state(jax.random.PRNGKey(1)))
    stylize_fn = family.make_stylizer()
    content, style = _pairs(seed=2)
    _, other_style = _pairs(seed=3)
    out = stylize_fn(params, content, style, jnp.float32(0.0))
    features = family.encode_fn()(content, ["relu4_1"])["relu4_1"]
    direct = jnp.clip(family.decode_fn(params["decoder"])(features), 0.0, 1.0)
    np.testing.assert_allclose(out, direct, atol=1e-5)
    np.testing.assert_allclose(stylize_fn(params, content, other_style, jnp.float32(0.0)),
                               out, atol=1e-5)
    assert not np.allclose(stylize_fn(params, content, style, jnp.float32(1.0)), out,
                           atol=1e-3)


def test_settings_that_do_not_fit_are_refused_in_one_line():
    cases = [
        (dict(dataset="digits", image_size=8, num_channels=1),
         "trains on (content, style) pairs: data.dataset='photos', not 'digits'"),
        (dict(image_size=20), "data.image_size=20 must be a multiple of 8"),
    ]
    for data, message in cases:
        with pytest.raises(UserError, match=re.escape(message)):
            get_family(_config(**data))
    config = _config()
    config.style.content_layer = "relu9_1"
    with pytest.raises(UserError, match=re.escape("style.content_layer: the encoder has no layer")):
        get_family(config)
    config = _config()
    config.style.encoder = "alexnet"
    with pytest.raises(UserError, match=r"style.encoder='alexnet' is not one of"):
        get_family(config)
    config = _config()
    config.model.ema_rate = 0.9  # a U-Net family's setting
    with pytest.raises(UserError, match=re.escape("config.model.ema_rate is a setting of")):
        check_family_settings(config)
    config = get_default_config()
    config.style.style_weight = 3.0
    with pytest.raises(UserError, match=re.escape(
            "config.style.style_weight is a setting of model.family='style_adain'; this run "
            "is model.family='diffusion'")):
        check_family_settings(config)


def test_the_experiment_config_sets_only_its_own_settings():
    from configs import style_adain

    config = style_adain.get_config()
    check_family_settings(config)
    assert pipeline.get_info(config.data).shape == (64, 64, 3)


# -- a run: checkpoint, restore, stylize -------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("style_adain")
    result = loop.run(_config(), workdir, devices=ONE_DEVICE)
    return workdir, result


def test_a_run_writes_checkpoints_scalars_and_the_snapshot_grid(trained):
    workdir, result = trained
    assert result["step"] == 2
    for name in ("loss", "content_loss", "style_loss", "eval_loss", "eval_style_loss"):
        assert np.isfinite(result[name]), name
    assert (workdir / "checkpoints" / "2").is_dir() and (workdir / "config.json").is_file()
    assert list(workdir.glob("events.out.tfevents.*"))
    from PIL import Image

    grid = np.asarray(Image.open(workdir / "samples" / "step_0000002.png"))
    # 3 rows (content, style, result) of 3 test pairs, 16 px enlarged to >= 256 wide.
    scale = -(-256 // (3 * 17))
    assert grid.shape == (3 * (16 * scale + 1) + 1, 3 * (16 * scale + 1) + 1, 3)


def test_restore_and_stylize_any_size(trained):
    workdir, _ = trained
    stylizer = stylize.load(workdir)
    assert stylizer.step == 2
    rng = np.random.default_rng(4)
    out = stylizer(rng.random((37, 29, 3)), rng.random((50, 60, 3)), alpha=0.5)
    assert out.shape == (37, 29, 3) and out.dtype == np.float32
    assert np.isfinite(out).all() and 0.0 <= out.min() and out.max() <= 1.0
    batch = stylizer((rng.random((2, 24, 40, 3)) * 255).astype(np.uint8), rng.random((9, 9, 3)))
    assert batch.shape == (2, 24, 40, 3)
    with pytest.raises(UserError, match=r"alpha must lie in \[0, 1\], got 2.0"):
        stylizer(rng.random((8, 8, 3)), rng.random((8, 8, 3)), alpha=2.0)


def test_sampling_is_refused_in_one_line(trained, family, tmp_path):
    workdir, _ = trained
    with pytest.raises(RequestError, match="feed-forward style transfer: it draws no samples"):
        family.accepts(SampleRequest(4))
    script = tmp_path / "sample_with_tiny_encoder.py"
    script.write_text(textwrap.dedent(f"""
        import runpy, sys
        sys.path.insert(0, {str(ROOT)!r})
        from style import feature_nets, feedforward
        feature_nets.register(feedforward.vgg_shaped_network(
            {ENCODER!r}, (4, 8, 8, 16), (1, 1, 1, 1)))
        sys.argv = ["sample.py", *sys.argv[1:]]
        runpy.run_path({str(ROOT / "sample.py")!r}, run_name="__main__")
    """))
    proc = cli_zygote.run(script, f"--workdir={workdir}", timeout=300, env=_env())
    line = _error_line(proc, status=2)
    assert "model.family='style_adain' is feed-forward style transfer" in line
    assert not (workdir / "samples.npz").exists()


def test_evaluation_is_refused_before_any_feature_network_is_read(trained):
    workdir, _ = trained
    proc = cli_zygote.run("evaluate.py", f"--workdir={workdir}", timeout=300, env=_env())
    line = _error_line(proc, status=2)
    assert "is feed-forward style transfer" in line and "no likelihood to evaluate" in line
    assert "Inception" not in proc.stderr
    assert not (workdir / "metrics.json").exists()
