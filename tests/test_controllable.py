"""Controllable generation on closed-form scores: inpainting and colorization against the
conditional Gaussian, SDEdit against its closed-form output law, guidance against the
formulas (counting network calls), the exact nfe and the errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import controllable, guidance, score, sde_lib

SDES = {
    "vp": sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "ve": sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000),
}
# Known-part replacement is score_sde's approximation of the conditional score; the Langevin
# corrector removes its bias at small t. VP spends few uniform steps at the informative
# noise levels, so it needs more corrector work than VE for the bias to drop below the
# sampling noise (with one corrector step at snr 0.16 and 200 steps, VP's mean is off by
# 0.6 conditional stds on the problem below, VE's by 0.15).
PC_OPTIONS = {
    "vp": {"steps": 200, "n_corrector_steps": 3, "snr": 0.3},
    "ve": {"steps": 100, "n_corrector_steps": 2, "snr": 0.3},
}
N_SAMPLES = 2000
# A correlated 3-D Gaussian, N(MU, SIGMA).
MU = np.array([0.5, -0.5, 0.0])
SIGMA = np.array([[1.0, 0.8, 0.6], [0.8, 1.0, 0.8], [0.6, 0.8, 1.0]])
# Colours of one pixel (RGB), N(MU_C, SIGMA_C): the channel mean tells about the colour.
MU_C = np.array([0.5, 0.0, -0.5])
SIGMA_C = np.array([[1.0, 0.7, 0.2], [0.7, 0.8, 0.1], [0.2, 0.1, 0.5]])


def gaussian_score_fn(sde, mu, sigma):
    """Exact score of p_t for data N(mu, sigma) on the flattened example:
    p_t = N(scale mu, scale^2 sigma + std^2 I), inverted in sigma's eigenbasis."""
    evals, evecs = np.linalg.eigh(np.asarray(sigma, np.float64))
    evals, evecs = jnp.asarray(evals, jnp.float32), jnp.asarray(evecs, jnp.float32)
    mu = jnp.asarray(mu, jnp.float32)

    def score_fn(x, t):
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        scale, std = sde.marginal_scale(t)[:, None], sde.marginal_std(t)[:, None]
        flat = x.reshape(x.shape[0], -1)
        var = scale**2 * evals + std**2
        return (-(((flat - scale * mu) @ evecs) / var) @ evecs.T).reshape(x.shape)

    return score_fn


def conditional(mu, sigma, known, values):
    """Mean and covariance of the unknown coordinates of N(mu, sigma) given the known."""
    k, u = known, ~known
    gain = sigma[np.ix_(u, k)] @ np.linalg.inv(sigma[np.ix_(k, k)])
    return mu[u] + gain @ (values[k] - mu[k]), sigma[np.ix_(u, u)] - gain @ sigma[np.ix_(k, u)]


def assert_gaussian(samples, mean, cov, n):
    """Mean within 5 standard errors, stds within 8%, correlations within 0.08."""
    std = np.sqrt(np.diag(cov))
    np.testing.assert_allclose(samples.mean(0), mean, atol=5 * std.max() / math.sqrt(n))
    np.testing.assert_allclose(samples.std(0), std, rtol=0.08)
    np.testing.assert_allclose(np.corrcoef(samples.T), cov / np.outer(std, std), atol=0.08)


def _counting(fn, counter):
    """``fn`` that bumps ``counter[0]`` on the host at every (runtime) evaluation."""

    def bump():
        counter[0] += 1

    def counted(*args):
        jax.debug.callback(bump)
        return fn(*args)

    return counted


def _static_nfe(fn, *args):
    """The (Python int) nfe of ``fn(key, *args)``, found by tracing without running."""
    found = []
    jax.eval_shape(lambda key: found.append(fn(key, *args)[1]) or 0, jax.random.key(0))
    return found[0]


# ---------------------------------------------------------------------------------------
# Inpainting and colorization
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sde_name", SDES)
def test_inpainting_samples_the_conditional_gaussian(sde_name):
    sde = SDES[sde_name]
    known = np.array([False, True, False])
    values = np.array([0.0, 1.5, 0.0])  # the conditional mean moves by 2.7 marginal stds
    image = np.broadcast_to(values, (N_SAMPLES, 3)).astype(np.float32)
    inpaint = controllable.inpainter(sde, (N_SAMPLES, 3), **PC_OPTIONS[sde_name])
    x, nfe = jax.jit(inpaint, static_argnums=1)(
        jax.random.key(0), gaussian_score_fn(sde, MU, SIGMA), image, known
    )
    x = np.asarray(x, np.float64)
    assert np.all(np.isfinite(x))
    assert np.array_equal(x[:, known], image[:, known])  # bit-exact
    mean, cov = conditional(MU, SIGMA, known, values)
    assert_gaussian(x[:, ~known], mean, cov, N_SAMPLES)
    options = PC_OPTIONS[sde_name]
    assert nfe == options["steps"] * (1 + options["n_corrector_steps"]) + 1


def test_colorization_keeps_the_gray_and_samples_the_colour_conditional():
    sde = SDES["ve"]
    shape = (N_SAMPLES, 1, 1, 3)  # one pixel, three channels, colours N(MU, SIGMA)
    gray = np.full((*shape[:-1], 1), 1.0, np.float32)
    colorize = controllable.colorizer(sde, shape, **PC_OPTIONS["ve"])
    x, _ = jax.jit(colorize, static_argnums=1)(
        jax.random.key(1), gaussian_score_fn(sde, MU_C, SIGMA_C), gray
    )
    x = np.asarray(x, np.float64)
    assert x.shape == shape and np.all(np.isfinite(x))
    np.testing.assert_allclose(x.mean(-1, keepdims=True), gray, atol=1e-6)
    # In the decoupled coordinates u = M x the first is sqrt(3) gray and the rest follow
    # the conditional of N(M MU_C, M SIGMA_C M^T).
    m = controllable.decoupling_matrix(3).astype(np.float64)
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(m[0], np.full(3, 1 / math.sqrt(3)), atol=1e-7)
    u = x.reshape(-1, 3) @ m.T
    known = np.array([True, False, False])
    mean, cov = conditional(m @ MU_C, m @ SIGMA_C @ m.T, known, np.array([math.sqrt(3), 0, 0]))
    assert np.max(np.abs(mean - (m @ MU_C)[1:])) > 0.5  # the gray is informative
    assert_gaussian(u[:, 1:], mean, cov, N_SAMPLES)


def test_inpainting_channel_mask_exact_pixels_and_true_nfe():
    """A (B, H, W, 1) mask over a colour image, known pixels kept bit-exactly, and the nfe
    equal to the number of score evaluations actually made."""
    sde = SDES["vp"]
    shape = (4, 2, 2, 3)
    mask = np.zeros((4, 2, 2, 1), np.float32)
    mask[:, 0] = 1.0
    image = np.asarray(jax.random.normal(jax.random.key(2), shape))
    score_fn = score.mixture_score_fn(sde, np.zeros((1, 12)), np.ones(1))
    inpaint = controllable.inpainter(sde, shape, steps=3, n_corrector_steps=2)
    counter = [0]
    x, nfe = jax.jit(lambda key: inpaint(key, _counting(score_fn, counter), image, mask))(
        jax.random.key(3)
    )
    jax.effects_barrier()
    x = np.asarray(x)
    assert nfe == 3 * (1 + 2) + 1 == counter[0]
    assert np.array_equal(x[:, 0], image[:, 0])
    assert not np.allclose(x[:, 1], image[:, 1])
    plain = controllable.inpainter(sde, shape, steps=5, corrector="none", denoise=False)
    found = []
    jax.eval_shape(
        lambda k: found.append(plain(k, score_fn, image, mask)[1]) or 0, jax.random.key(0)
    )
    assert found == [5]


# ---------------------------------------------------------------------------------------
# SDEdit
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sde_name,strengths", [("vp", (0.1, 0.4, 1.0)), ("ve", (0.3, 1.0))])
def test_sdedit_follows_the_exact_edit_law(sde_name, strengths):
    """For data N(MU, S^2 I) the edit of ``image`` is x0 ~ p(x0 | x_t0) with
    x_t0 ~ N(scale image, std^2): Gaussian, mean MU + S^2 scale^2 / v (image - MU) and
    variance S^2 std^2 / v (1 + S^2 scale^2 / v), v = scale^2 S^2 + std^2. At strength 1
    that is the data distribution; the distance to the image grows with the strength."""
    sde = SDES[sde_name]
    mu, s = np.array([1.0, -1.0, 0.5]), 0.5
    image = np.array([3.0, 1.0, -2.0])
    score_fn = score.mixture_score_fn(sde, mu[None], [s])
    distances, shifts = [], []
    for strength in strengths:
        edit = controllable.sdedit(
            sde, (N_SAMPLES, 3), strength=strength, steps=round(strength * 200)
        )
        x, nfe = jax.jit(edit, static_argnums=1)(
            jax.random.key(4), score_fn, jnp.broadcast_to(image, (N_SAMPLES, 3))
        )
        x = np.asarray(x, np.float64)
        assert nfe == round(strength * 200) + 1
        t0 = jnp.asarray(strength * sde.T)
        scale, std = float(sde.marginal_scale(t0)), float(sde.marginal_std(t0))
        v = scale**2 * s**2 + std**2
        mean = mu + s**2 * scale**2 / v * (image - mu)
        sd = math.sqrt(s**2 * std**2 / v * (1 + s**2 * scale**2 / v))
        np.testing.assert_allclose(x.mean(0), mean, atol=5 * s / math.sqrt(N_SAMPLES))
        np.testing.assert_allclose(x.std(0), sd, rtol=0.08)
        distances.append(np.mean(np.linalg.norm(x - image, axis=-1)))
        shifts.append(np.linalg.norm(x.mean(0) - image))
        if strength == 1.0:  # the data distribution
            np.testing.assert_allclose(x.mean(0), mu, atol=5 * s / math.sqrt(N_SAMPLES))
            np.testing.assert_allclose(x.std(0), s, rtol=0.08)
    assert np.all(np.diff(distances) > 0), distances
    assert shifts[0] < 0.4 * np.linalg.norm(image - mu)  # a light edit stays near the image
    assert np.all(np.diff(shifts) > 0), shifts


def test_sdedit_default_steps_scale_with_strength():
    sde = sde_lib.VPSDE(N=1000)
    score_fn = score.mixture_score_fn(sde, np.zeros((1, 2)), np.ones(1))
    image = jnp.zeros((2, 2))
    for strength, nfe in ((0.25, 251), (1.0, 1001)):
        edit = controllable.sdedit(sde, (2, 2), strength=strength)
        assert _static_nfe(edit, score_fn, image) == nfe


# ---------------------------------------------------------------------------------------
# Guidance
# ---------------------------------------------------------------------------------------


def _class_score_fn(sde, means, calls):
    """Score of N(means[y], I) at time t, with ``calls`` recording each call's batch size.
    The last row of ``means`` is the null class."""
    means = jnp.asarray(means, jnp.float32)

    def cond_score_fn(x, t, labels):
        calls.append(x.shape[0])
        scale = sde.marginal_scale(t)[:, None]
        var = scale**2 + sde.marginal_std(t)[:, None] ** 2
        return (scale * means[labels] - x) / var

    return cond_score_fn


def test_classifier_free_guidance_formula_in_one_batched_call():
    sde = SDES["vp"]
    means = np.array([[2.0, 0.0], [-1.0, 1.0], [0.0, 0.0]])  # class 2 is the null class
    calls = []  # the batch size of every call, recorded while tracing
    cond = _class_score_fn(sde, means, calls)
    x = jax.random.normal(jax.random.key(5), (6, 2))
    t = jnp.full((6,), 0.3)
    labels = jnp.array([0, 1, 0, 1, 1, 0])
    w = 1.5
    cfg = guidance.classifier_free_guidance

    @jax.jit
    def run(x, t, w_traced):
        s_c = cond(x, t, labels)
        s_u = cond(x, t, jnp.full((6,), 2))
        s_c1 = cond(x, t, jnp.ones(6, jnp.int32))
        del calls[:]
        plain = cfg(cond, labels, 0.0, null_label=2)(x, t)
        guided = cfg(cond, labels, w, null_label=2)(x, 0.3)  # scalar t
        traced = cfg(cond, 1, w_traced, null_label=2)(x, t)  # scalar label, traced w
        return s_c, s_u, s_c1, plain, guided, traced

    s_c, s_u, s_c1, plain, guided, traced = run(x, t, w)
    # w = 0: one call on the batch; w > 0: one call on the batch doubled (cond + null).
    assert calls == [6, 12, 12]
    np.testing.assert_array_equal(plain, s_c)
    np.testing.assert_allclose(guided, (1 + w) * s_c - w * s_u, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(traced, (1 + w) * s_c1 - w * s_u, rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(guided - s_c)) > 0.1


def test_classifier_guidance_adds_the_classifier_gradient():
    """Two classes N(+-m, S^2 I) with equal priors: p(y | x_t) is logistic,
    log p(y | x_t) = log sigmoid(y_sign 2 scale m.x / v), v = scale^2 S^2 + std^2, whose
    gradient is known; guiding the mixture's score at scale 1 gives the class's score."""
    sde = SDES["ve"]
    m, s = np.array([1.0, -0.5]), 0.4
    mixture = score.mixture_score_fn(sde, np.stack([m, -m]), [s, s])
    x = jax.random.normal(jax.random.key(6), (8, 2)) * 2.0
    t = jnp.linspace(0.05, 0.6, 8)
    labels = jnp.array([0, 1] * 4)

    def coefficients(t):
        scale, std = sde.marginal_scale(t), sde.marginal_std(t)
        v = scale**2 * s**2 + std**2
        return (2 * scale / v)[:, None] * jnp.asarray(m, jnp.float32), scale, v

    def log_prob_fn(x, t, labels):
        a, _, _ = coefficients(t)
        return jax.nn.log_sigmoid((1.0 - 2.0 * labels) * jnp.sum(a * x, -1))

    @jax.jit
    def run(x, t):
        sign = 1.0 - 2.0 * labels  # class 0 has mean +m
        a, scale, v = coefficients(t)
        analytic = (sign * (1 - jax.nn.sigmoid(sign * jnp.sum(a * x, -1))))[:, None] * a
        class_score = (sign[:, None] * jnp.asarray(m) * scale[:, None] - x) / v[:, None]
        guided = [
            guidance.classifier_guidance(mixture, log_prob_fn, labels, w)(x, t)
            for w in (1.0, 3.0)
        ]
        return mixture(x, t), analytic, class_score, guided

    base, analytic, class_score, (guided_1, guided_3) = run(x, t)
    assert np.max(np.abs(analytic)) > 0.1
    np.testing.assert_allclose(guided_1, base + analytic, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(guided_3, base + 3.0 * analytic, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(guided_1, class_score, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_discriminator_guidance_turns_the_model_score_into_the_data_score(sde_name):
    """Model N(mu_m, S_m) against data N(MU, SIGMA): a perfect discriminator's logit is
    log p_t(x) - log p_t^model(x); at scale 1 the guided model score is the data score,
    at scale w it moves w of the way (and on past it for w > 1)."""
    sde = SDES[sde_name]
    mu_m, sigma_m = np.array([0.0, 0.3, -0.4]), 0.5 * np.eye(3)
    model, data = gaussian_score_fn(sde, mu_m, sigma_m), gaussian_score_fn(sde, MU, SIGMA)

    def log_density(mu, sigma):
        def log_p(x, t):
            scale, std = sde.marginal_scale(t), sde.marginal_std(t)
            cov = (scale[:, None, None] ** 2 * jnp.asarray(sigma, jnp.float32)
                   + std[:, None, None] ** 2 * jnp.eye(3))
            return jax.vmap(jax.scipy.stats.multivariate_normal.logpdf)(
                x.reshape(len(x), -1), scale[:, None] * jnp.asarray(mu, jnp.float32), cov)

        return log_p

    log_data, log_model = log_density(MU, SIGMA), log_density(mu_m, sigma_m)

    def log_ratio(x, t):
        return log_data(x, t) - log_model(x, t)

    x = jax.random.normal(jax.random.key(8), (6, 1, 1, 3)) * 1.5
    t = jnp.linspace(0.02, 0.8, 6)
    guided = {w: guidance.discriminator_guidance(model, log_ratio, w)(x, t)
              for w in (0.0, 0.5, 1.0)}
    base, target = model(x, t), data(x, t)
    assert np.max(np.abs(target - base)) > 0.3
    np.testing.assert_allclose(guided[0.0], base, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(guided[1.0], target, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(guided[0.5], 0.5 * (base + target), rtol=1e-3, atol=1e-3)


def test_autoguidance_extrapolates_away_from_a_weaker_guide():
    """Model N(0, s^2) and a wider guide N(0, g^2): the autoguided score at weight w is the
    score of the Gaussian of precision (1 + w) / v_s - w / v_g (v = the marginal variance
    at t), narrower than the model's; at w = 0 it is the model's and the guide is never
    called."""
    sde = SDES["vp"]
    s, g = 0.5, 1.0
    model = score.mixture_score_fn(sde, np.zeros((1, 3)), [s])
    guide = score.mixture_score_fn(sde, np.zeros((1, 3)), [g])
    x = jax.random.normal(jax.random.key(7), (6, 3))
    t = jnp.linspace(0.05, 0.9, 6)
    scale, std = sde.marginal_scale(t), sde.marginal_std(t)
    v_s, v_g = scale**2 * s**2 + std**2, scale**2 * g**2 + std**2
    for w in (0.5, 2.0):
        precision = (1 + w) / v_s - w / v_g
        guided = guidance.autoguidance(model, guide, w)(x, t)
        np.testing.assert_allclose(guided, -precision[:, None] * x, rtol=1e-5, atol=1e-5)
        assert np.all(precision > 1 / v_s)

    def unusable(x, t):
        raise AssertionError("the guide is not evaluated at w = 0")

    np.testing.assert_array_equal(guidance.autoguidance(model, unusable, 0.0)(x, t),
                                  model(x, t))
    with pytest.raises(ValueError, match=r"autoguidance scale must be >= 0, got -1\.0"):
        guidance.autoguidance(model, guide, -1.0)


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


def test_errors():
    sde = SDES["vp"]
    score_fn = score.mixture_score_fn(sde, np.zeros((1, 12)), np.ones(1))
    key = jax.random.key(0)
    shape = (2, 2, 2, 3)
    inpaint = controllable.inpainter(sde, shape, steps=2)
    with pytest.raises(ValueError, match=r"image must have shape \(2, 2, 2, 3\)"):
        inpaint(key, score_fn, jnp.zeros((2, 2, 2, 1)), jnp.ones(shape))
    with pytest.raises(ValueError, match="mask of shape"):
        inpaint(key, score_fn, jnp.zeros(shape), jnp.ones((2, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"colour \(C > 1\) dataset, this one has 1 channel"):
        controllable.colorizer(sde, (2, 2, 2, 1))
    colorize = controllable.colorizer(sde, shape, steps=2)
    with pytest.raises(ValueError, match="gray must have shape"):
        colorize(key, score_fn, jnp.zeros(shape))
    for strength in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="strength"):
            controllable.sdedit(sde, shape, strength=strength)
    with pytest.raises(ValueError, match="guidance_scale"):
        guidance.classifier_free_guidance(lambda x, t, y: x, jnp.zeros(2), -1.0, 0)
    with pytest.raises(ValueError, match="unknown predictor"):
        controllable.inpainter(sde, shape, predictor="heun")
    with pytest.raises(ValueError, match="unknown predictor"):
        controllable.sdedit(sde, shape, strength=0.5, sampler="heun")
    with pytest.raises(ValueError, match="predictor 'none' cannot serve them"):
        controllable.inpainter(sde, shape, predictor="none")
    with pytest.raises(ValueError, match="eps"):
        controllable.inpainter(sde, shape, eps=0.0)
