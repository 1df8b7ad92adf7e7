"""Text-to-image diffusion: the U-Net's text inputs (pooled embedding into the time
embedding, masked cross-attention), the family (caption encodings as statistics, prompt
dropout to the empty prompt, prompts as the classes of a request), and sample.py's
--prompt / --prompts_file with their refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data import captions
from errors import UserError
from networks.unet import UNet
from tests.cli_errors import error_line, flag_error_line
from tests.configs import tiny, tiny_families
from tests.test_cli import ROOT, _run
from training.families import get_family
from training.families.request import SampleRequest as R

FAMILIES = str(ROOT / "tests" / "configs" / "tiny_families.py")


def _unet(text_dim: int = 0, **kw) -> UNet:
    return UNet(image_size=8, num_channels=1, nf=8, ch_mult=(1, 2), num_res_blocks=1,
                attn_resolutions=(), text_dim=text_dim, init_scale=1.0, rngs=nnx.Rngs(0),
                **kw)


def test_the_unet_reads_the_tokens_it_is_given_and_ignores_the_padding():
    net = _unet(12, text_attn_resolutions=(8, 4))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
    tokens = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 12))
    mask = jnp.array([[True, True, False, False, False], [True] * 5])
    pooled = tokens.mean(axis=1)
    out = net(x, jnp.ones(2), text=(tokens, mask, pooled))
    assert out.shape == (2, 8, 8, 1)
    padded = tokens.at[0, 2:].set(50.0)  # row 0's padding only
    np.testing.assert_allclose(net(x, jnp.ones(2), text=(padded, mask, pooled)), out,
                               atol=1e-5)
    other = tokens.at[0, 1].set(3.0)  # one real token of row 0
    moved = net(x, jnp.ones(2), text=(other, mask, pooled))
    assert not np.allclose(moved[0], out[0]) and np.allclose(moved[1], out[1], atol=1e-5)
    # The pooled embedding steers the model through the time embedding.
    assert not np.allclose(net(x, jnp.ones(2), text=(tokens, mask, pooled + 1.0)), out)


def test_a_unet_without_text_has_no_text_parameters_and_refuses_text():
    plain = nnx.state(_unet(), nnx.Param)
    paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(plain)}
    assert not any("cross" in p or "text" in p for p in paths)
    text = (jnp.zeros((1, 3, 4)), jnp.ones((1, 3), bool), jnp.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"text given to a model without text conditioning"):
        _unet()(jnp.zeros((1, 8, 8, 1)), jnp.ones(1), text=text)
    with pytest.raises(ValueError, match=r"text-conditional \(text_dim=4\): pass text="):
        _unet(4)(jnp.zeros((1, 8, 8, 1)), jnp.ones(1))


@pytest.fixture(scope="module")
def family():
    return get_family(tiny_families.get_config("text"))


def test_the_statistics_hold_the_encoded_caption_bank_and_the_empty_prompt(family):
    bank = captions.bank("train")
    assert family.table.pooled.shape == (len(bank) + 1, 384)
    assert family.table.tokens.shape[::2] == (len(bank) + 1, 384)
    assert family.null_label == len(bank) and family.num_classes == 0
    # The empty prompt, last, is [CLS][SEP]: two tokens.
    assert int(family.table.mask[-1].sum()) == 2
    # Prompt dropout replaces a caption by the empty prompt at its rate, and only by it.
    batch = {"caption": jnp.arange(4000) % len(bank)}
    rows = np.asarray(family.training_labels(jax.random.PRNGKey(0), batch))
    dropped = rows == family.null_label
    assert 0.08 < dropped.mean() < 0.12
    np.testing.assert_array_equal(rows[~dropped], np.asarray(batch["caption"])[~dropped])


def test_a_train_step_on_captions_and_a_guided_draw_per_prompt(family):
    state = family.init_state(jax.random.PRNGKey(0))
    batch = {"image": jnp.zeros((16, 8, 8, 1)), "label": jnp.zeros(16, jnp.int32),
             "caption": jnp.arange(16, dtype=jnp.int32)}
    new, metrics = jax.jit(family.train_step)(state, batch)
    assert int(new.step) == 1 and np.isfinite(float(metrics["loss"]))
    request = R(4, prompts=("a handwritten 3", "the digit seven"), guidance_scale=2.0,
                sampler="euler_maruyama", steps=2)
    drawn_by = family.for_request(request)
    assert drawn_by.num_classes == 2 and drawn_by.prompts == request.prompts
    assert family.for_request(request) is drawn_by  # encoded once
    images, nfe = family.make_sampler(request)(family.sample_params(new),
                                               jax.random.PRNGKey(1))
    assert images.shape == (4, 8, 8, 1) and nfe == 3
    # Without prompts: one training caption per digit, in turn.
    assert family.for_request(R(4)).prompts == tuple(
        captions.prompts_for(d, "train")[0] for d in range(10))


# One sampler of each kind: they share the guided score function and differ in how they
# integrate it (predictor-corrector, Runge-Kutta with diffrax, fixed-step ODE, multistep,
# EDM's sigma grid, flow paths aside). Every sampler's own numerics are tested in
# test_sampling.py and test_fast_samplers.py.
_ONE_SAMPLER_PER_KIND = ("pc", "ode", "heun", "dpm_solver_pp", "edm_heun")


def test_every_kind_of_sampler_that_serves_vp_draws_guided_prompts(family):
    from diffusion import sampling

    assert set(_ONE_SAMPLER_PER_KIND) <= set(sampling.SAMPLERS)
    params = family.init_params(jax.random.PRNGKey(0))
    for name in _ONE_SAMPLER_PER_KIND:
        steps = None if name == "ode" else 2
        request = R(2, prompts=("the numeral seven",), guidance_scale=3.0, sampler=name,
                    steps=steps)
        images, nfe = family.make_sampler(request)(params, jax.random.PRNGKey(1))
        assert images.shape == (2, 8, 8, 1) and nfe > 0, name
        assert np.all(np.isfinite(np.asarray(images))), name


@pytest.mark.parametrize("request_kwargs, message", [
    (dict(prompts=()), r"^no prompts given"),
    (dict(prompts="a 3"), r"^prompts must be a sequence of strings"),
    (dict(prompts=("a 3",), labels=3), r"^--class_label and --prompt exclude each other"),
    (dict(prompts=("a 3",), guidance_scale=-1.0), r"^--guidance_scale must be >= 0"),
])
def test_bad_prompt_requests_are_one_line(request_kwargs, message):
    with pytest.raises(UserError, match=message):
        R(4, **request_kwargs)


def test_what_a_text_model_cannot_do_and_a_prompt_to_another_model(family):
    with pytest.raises(UserError, match=r"^prompt 1 \('seven seven seven seven'\.\.\.\) "
                                        r"has \d+ tokens; the text encoder reads at most 256"):
        family.make_sampler(R(2, prompts=("seven " * 300,)))
    with pytest.raises(UserError, match=r"^a text-conditional model samples from prompts .* "
                                        r"cannot do task 'inpaint'$"):
        family.make_sampler(R(2, task="inpaint", image=np.zeros((8, 8, 1)),
                              mask=np.ones((8, 8, 1))))
    plain = get_family(tiny.get_config())
    with pytest.raises(UserError, match=r"^--prompt needs a model trained on text \(model"
                                        r"\.family='text_diffusion'\); this one is model"
                                        r"\.family='diffusion'$"):
        plain.make_sampler(R(2, prompts=("a 3",)))
    no_dropout = tiny_families.get_config("text")
    no_dropout.training.prompt_dropout = 0.0
    with pytest.raises(UserError, match=r"needs a model trained with training.prompt_dropout"):
        get_family(no_dropout).make_sampler(R(2, prompts=("a 3",), guidance_scale=1.0))
    labelled = tiny_families.get_config("text")
    labelled.model.num_classes = 10
    with pytest.raises(UserError, match=r"steered by prompts, not labels"):
        get_family(labelled)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("text")
    proc = _run("train.py", f"--config={FAMILIES}:text", f"--workdir={workdir}",
                "--config.training.snapshot_sampling=False")
    assert proc.returncode == 0, proc.stderr
    return workdir


def test_sample_py_draws_each_prompt_and_records_it(text_run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten three\n\nthe digit seven\n")
    out = tmp_path / "s.npz"
    proc = _run("sample.py", f"--workdir={text_run}", f"--prompts_file={prompts}",
                "--num_samples=3", "--guidance_scale=3", "--sampler=euler_maruyama",
                "--steps=2", f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as npz:
        assert npz["images"].shape == (6, 8, 8, 1)
        assert list(npz["prompts"]) == ["a handwritten three", "the digit seven"] * 3
        assert float(npz["guidance_scale"]) == 3.0
    assert out.with_suffix(".png").is_file()


@pytest.mark.parametrize("flags, message", [
    (["--prompt=a 3", "--guidance_scale=-1"], "--guidance_scale must be >= 0, got -1.0"),
    (["--prompt=a 3", "--prompts_file=x"], "--prompt and --prompts_file exclude each other"),
    (["--prompts_file=EMPTY"], "no prompts in --prompts_file"),
    (["--prompt=" + "seven " * 300], "tokens; the text encoder reads at most 256"),
])
def test_bad_prompt_flags_are_one_line_and_write_nothing(text_run, tmp_path, flags, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    out = tmp_path / "s.npz"
    flags = [f.replace("EMPTY", str(empty)) for f in flags]
    proc = _run("sample.py", f"--workdir={text_run}", f"--out={out}", *flags)
    assert message in flag_error_line(proc)
    assert not out.exists()


def test_a_prompt_to_a_model_not_trained_on_text_is_one_line(tmp_path):
    out = tmp_path / "s.npz"
    tiny_config = str(ROOT / "tests" / "configs" / "tiny.py")
    proc = _run("sample.py", f"--config={tiny_config}", f"--workdir={tmp_path}",
                "--prompt=a 3", f"--out={out}")
    assert "--prompt needs a model trained on text" in flag_error_line(proc)
    assert not out.exists()


def test_a_missing_text_encoder_is_one_line_and_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    proc = _run("train.py", f"--config={FAMILIES}:text", f"--workdir={workdir}",
                f"--config.text.encoder={tmp_path / 'nowhere'}")
    assert "nowhere" in error_line(proc)
    assert not workdir.exists()


def test_prompt_accuracy_scores_each_sample_against_the_digit_its_prompt_names(
        family, monkeypatch):
    from data import pipeline
    from training import eval_hook, inference

    config = family.config
    test = pipeline.read_split(config.data, "test")
    by_digit = {d: test["image"][test["label"] == d] for d in range(10)}

    def real_digits_for(named_family, state, request, shift=0):
        # Real test digits in the samples' order: sample i shows the digit of prompt i % P
        # (plus `shift`).
        assert request.prompts is not None and state == "state"
        rows = np.arange(request.num_samples) % len(request.prompts)
        split = "heldout" if request.prompts == captions.bank("heldout") else "train"
        digits = (captions.digit_of_row(rows, split) + shift) % 10
        return np.stack([by_digit[d][i % 30] for i, d in enumerate(digits)]), 1

    monkeypatch.setattr(inference, "generate", real_digits_for)
    accuracy = eval_hook.prompt_accuracy(config, family, "state", per_prompt=2)
    assert set(accuracy) == {"train", "heldout"}
    assert accuracy["train"] > 0.9 and accuracy["heldout"] > 0.9

    def wrong_digits_for(named_family, state, request):
        return real_digits_for(named_family, state, request, shift=1)

    monkeypatch.setattr(inference, "generate", wrong_digits_for)
    accuracy = eval_hook.prompt_accuracy(config, family, "state", per_prompt=2)
    assert accuracy["train"] < 0.3 and accuracy["heldout"] < 0.3


def test_the_samples_picture_has_one_row_per_prompt(monkeypatch):
    from training import images

    seen = {}
    monkeypatch.setattr(images, "make_grid",
                        lambda x, ncol=None: seen.update(order=x[:, 0, 0, 0].tolist(),
                                                         ncol=ncol))
    samples = (np.arange(6)[:, None, None, None] * np.ones((6, 8, 8, 1))).astype(np.uint8)
    images.samples_picture(samples, 2)  # samples 0, 2, 4 of prompt 0; 1, 3, 5 of prompt 1
    assert seen == {"order": [0, 2, 4, 1, 3, 5], "ncol": 3}
    images.samples_picture(samples, 1)
    assert seen == {"order": [0, 1, 2, 3, 4, 5], "ncol": None}
