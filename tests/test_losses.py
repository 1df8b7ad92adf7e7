"""Score parametrisation and training losses, checked on closed-form cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from scipy import integrate

from diffusion import losses, score, sde_lib

SDES = {
    "vp": sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "subvp": sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "ve": sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000),
}
S = 0.5  # data std of the Gaussian cases
EPS = 1e-5


def _bcast(v, x):
    return np.asarray(v).reshape((-1,) + (1,) * (x.ndim - 1))


def _gaussian_score(sde, d):
    return score.mixture_score_fn(sde, np.zeros((1, d)), [S])


# ----------------------------------------------------------------------------- score.py


def _net_fn(x, c_noise):
    # The output carries c_noise so one jitted call checks conditioning and scaling.
    return x * c_noise.reshape((-1,) + (1,) * (x.ndim - 1))


def test_score_fn_parametrisations():
    x = jax.random.normal(jax.random.key(0), (3, 2, 2, 1))
    t = jnp.array([0.01, 0.5, 1.0])
    vp, subvp, ve = SDES["vp"], SDES["subvp"], SDES["ve"]

    @jax.jit
    def scores(x, t):
        return {
            "vp": score.get_score_fn(vp, _net_fn)(x, t),
            "vp_discrete": score.get_score_fn(vp, _net_fn, continuous=False)(x, t),
            "subvp": score.get_score_fn(subvp, _net_fn)(x, t),
            "ve": score.get_score_fn(ve, _net_fn)(x, t),
            "ve_discrete": score.get_score_fn(ve, _net_fn, continuous=False)(x, t),
            "c_ve": score.noise_conditioning(ve, t),
        }

    out = scores(x, t)
    tn = np.asarray(t, np.float64)
    vp_std = np.sqrt(-np.expm1(-(0.1 * tn + 0.5 * tn**2 * 19.9)))
    np.testing.assert_allclose(out["vp"], -x * _bcast(999 * tn / vp_std, x), rtol=1e-5)
    ddpm_std = vp.sqrt_1m_alphas_cumprod[np.round(tn * 999).astype(int)]
    np.testing.assert_allclose(out["vp_discrete"], -x * _bcast(999 * tn / ddpm_std, x), rtol=1e-5)
    sub_std = -np.expm1(-(0.1 * tn + 0.5 * tn**2 * 19.9))
    np.testing.assert_allclose(out["subvp"], -x * _bcast(999 * tn / sub_std, x), rtol=1e-4)
    sigma = 0.01 * 5000.0**tn
    for key in ("ve", "ve_discrete"):
        np.testing.assert_allclose(out[key], x * _bcast(np.log(sigma) / sigma, x), rtol=1e-4)
    np.testing.assert_allclose(out["c_ve"], np.log(sigma), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"VP \(DDPM\) and VE \(SMLD\)"):
        score.get_score_fn(subvp, _net_fn, continuous=False)


@pytest.mark.parametrize("name", SDES)
def test_mixture_score_is_grad_log_density(name):
    sde = SDES[name]
    means = np.array([[-1.0, 0.5], [2.0, -1.0], [0.0, 3.0]], np.float32)
    stds = np.array([0.3, 0.6, 1.0], np.float32)
    weights = np.array([0.2, 0.5, 0.3], np.float32)
    score_fn = score.mixture_score_fn(sde, means, stds, weights)

    def log_p(x, t):  # one example (2,), scalar t
        scale, std = sde.marginal_scale(t), sde.marginal_std(t)
        var = scale**2 * stds**2 + std**2
        sq = jnp.sum((x[None] - scale * means) ** 2, axis=-1)
        return jax.nn.logsumexp(jnp.log(weights) - jnp.log(2 * jnp.pi * var) - 0.5 * sq / var)

    x = jax.random.normal(jax.random.key(1), (6, 2)) * 2.0
    t = jnp.array([1e-3, 0.05, 0.2, 0.5, 0.8, 1.0])
    got, expected = jax.jit(lambda x, t: (score_fn(x, t), jax.vmap(jax.grad(log_p))(x, t)))(x, t)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-5)


# ---------------------------------------------------------------------------- losses.py


def _np_marginal(name, t):
    """(scale, std) of the perturbation kernel in float64."""
    integral = 0.1 * t + 0.5 * t**2 * (20.0 - 0.1)
    return {
        "vp": lambda: (np.exp(-0.5 * integral), np.sqrt(-np.expm1(-integral))),
        "subvp": lambda: (np.exp(-0.5 * integral), -np.expm1(-integral)),
        "ve": lambda: (1.0, 0.01 * 5000.0**t),
    }[name]()


def _dsm_expectation(name):
    """E_t of the per-dim DSM loss for N(0, S^2) data and the exact score. With
    x_t = a x0 + std z and score -x_t / v, v = a^2 S^2 + std^2, the per-dim error
    z - std x_t / v = (a^2 S^2 z - std a x0) / v has variance a^2 S^2 / v."""

    def integrand(t):
        a, std = _np_marginal(name, t)
        return a**2 * S**2 / (a**2 * S**2 + std**2)

    value, _ = integrate.quad(integrand, EPS, 1.0, limit=200)
    return value / (1.0 - EPS)


@pytest.mark.parametrize("name", SDES)
def test_continuous_dsm_loss_matches_analytic_value(name):
    sde = SDES[name]
    d, batch = 2, 65536
    x = S * jax.random.normal(jax.random.key(2), (batch, d))
    score_fn = _gaussian_score(sde, d)
    expected = _dsm_expectation(name)
    mean_fn, sum_fn = losses.get_loss_fn(sde), losses.get_loss_fn(sde, reduce_mean=False)
    both = jax.jit(lambda k, x: (mean_fn(score_fn, k, x), sum_fn(score_fn, k, x)))
    mean_loss, sum_loss = map(float, both(jax.random.key(3), x))
    # Per-example loss is r(t) chi2_d / d with r <= 1: its std is at most sqrt(1 + 2/d).
    tol = 4 * np.sqrt(2.0 / batch)
    assert abs(mean_loss - expected) < tol, (mean_loss, expected)
    np.testing.assert_allclose(sum_loss, d * mean_loss, rtol=1e-5)


@pytest.mark.parametrize("name", SDES)
def test_zero_score_loss_is_noise_energy(name):
    sde = SDES[name]
    x = jax.random.normal(jax.random.key(4), (4096, 3, 2, 1))
    zero = lambda x, t: jnp.zeros_like(x)

    @jax.jit
    def both(key, x):
        return (
            losses.get_loss_fn(sde)(zero, key, x),
            losses.get_loss_fn(sde, reduce_mean=False)(zero, key, x),
        )

    mean_loss, sum_loss = both(jax.random.key(5), x)
    assert abs(float(mean_loss) - 1.0) < 4 * np.sqrt(2 / (6 * 4096))
    np.testing.assert_allclose(sum_loss, 6 * mean_loss, rtol=1e-5)


@pytest.mark.parametrize("name", SDES)
def test_continuous_loss_terms_and_likelihood_weighting(name):
    """Rebuild the per-example terms from what the score function saw (same key for every
    variant): the weighted terms are g^2 / std^2 times the unweighted ones."""
    sde = SDES[name]
    x = jax.random.normal(jax.random.key(6), (8, 2, 2, 1))
    calls = []

    def record(x_t, t):
        calls.append((np.asarray(x_t, np.float64), np.asarray(t, np.float64)))

    def recording_score(x_t, t):
        jax.debug.callback(record, x_t, t, ordered=True)
        return -0.7 * x_t

    variants = [(lw, rm) for lw in (False, True) for rm in (True, False)]

    @jax.jit
    def all_variants(key, x):
        return [
            losses.get_loss_fn(sde, likelihood_weighting=lw, reduce_mean=rm)(
                recording_score, key, x
            )
            for lw, rm in variants
        ]

    values = all_variants(jax.random.key(7), x)
    jax.effects_barrier()
    assert len(calls) == len(variants)
    x_t, t = calls[0]
    for other_x_t, other_t in calls[1:]:
        np.testing.assert_array_equal(other_t, t)
        np.testing.assert_array_equal(other_x_t, x_t)
    assert np.all((t >= EPS) & (t <= 1.0))
    scale, std = _np_marginal(name, t)
    z = (x_t - _bcast(scale, x_t) * np.asarray(x, np.float64)) / _bcast(std, x_t)
    g2 = np.asarray(sde.sde(jnp.zeros_like(x), jnp.asarray(t))[1], np.float64) ** 2
    squares = ((-0.7 * x_t) * _bcast(std, x_t) + z) ** 2
    for (lw, rm), value in zip(variants, values, strict=True):
        terms = (np.mean if rm else np.sum)(squares, axis=(1, 2, 3))
        expected = (g2 / std**2 * terms if lw else terms).mean()
        np.testing.assert_allclose(value, expected, rtol=1e-4, err_msg=f"{lw=} {rm=}")


def test_ddpm_loss_on_exact_discrete_score():
    sde = SDES["vp"]
    d, batch = 2, 65536
    ab = jnp.asarray(sde.alphas_cumprod, jnp.float32)

    def exact_score(x, t):  # score of the DDPM marginal N(0, (ab S^2 + 1 - ab) I)
        i = jnp.round(t * (sde.N - 1)).astype(jnp.int32)
        return -x / (ab[i] * S**2 + 1.0 - ab[i])[:, None]

    x = S * jax.random.normal(jax.random.key(8), (batch, d))
    loss_fn = losses.get_loss_fn(sde, continuous=False)
    zero_score = lambda x, t: jnp.zeros_like(x)
    both = jax.jit(lambda k, x: (loss_fn(exact_score, k, x), loss_fn(zero_score, k, x)))
    value, zero = map(float, both(jax.random.key(9), x))
    abn = sde.alphas_cumprod
    expected = np.mean(abn * S**2 / (abn * S**2 + 1 - abn))
    assert abs(value - expected) < 4 * np.sqrt(2.0 / batch), (value, expected)
    assert abs(zero - 1.0) < 4 * np.sqrt(2.0 / (d * batch))


def test_ddpm_loss_is_noise_prediction_through_score_fn():
    """With a network wrapped by get_score_fn(continuous=False), the DDPM loss is exactly
    || net(x_i, i) - z ||^2: the score round-trips to the noise prediction."""
    sde = SDES["vp"]
    x = jax.random.normal(jax.random.key(10), (16, 3))
    seen = []

    def net_fn(x_t, c_noise):
        jax.debug.callback(lambda *a: seen.extend(a), x_t, c_noise, ordered=True)
        return 0.3 * x_t

    loss_fn = losses.get_loss_fn(sde, continuous=False)
    score_fn = score.get_score_fn(sde, net_fn, continuous=False)
    loss = jax.jit(lambda k, x: loss_fn(score_fn, k, x))(jax.random.key(11), x)
    jax.effects_barrier()
    x_t, i = (np.asarray(a, np.float64) for a in seen)
    np.testing.assert_allclose(i, np.round(i), atol=1e-3)  # integer DDPM timesteps
    i = np.round(i).astype(int)
    z = (x_t - sde.sqrt_alphas_cumprod[i, None] * x) / sde.sqrt_1m_alphas_cumprod[i, None]
    np.testing.assert_allclose(loss, np.mean((0.3 * x_t - z) ** 2), rtol=1e-4)


def test_smld_loss_on_exact_score():
    sde = SDES["ve"]
    d, batch = 2, 65536
    x = S * jax.random.normal(jax.random.key(12), (batch, d))
    score_fn = _gaussian_score(sde, d)  # VE marginal std at t = i/(N-1) is sigma_i
    mean_fn = losses.get_loss_fn(sde, continuous=False)
    sum_fn = losses.get_loss_fn(sde, continuous=False, reduce_mean=False)
    both = jax.jit(lambda k, x: (mean_fn(score_fn, k, x), sum_fn(score_fn, k, x)))
    value, sum_value = map(float, both(jax.random.key(13), x))
    sig = sde.discrete_sigmas
    expected = 0.5 * np.mean(S**2 / (S**2 + sig**2))
    assert abs(value - expected) < 4 * 0.5 * np.sqrt(2.0 / batch), (value, expected)
    np.testing.assert_allclose(sum_value, d * value, rtol=1e-4)


def test_discrete_and_option_errors():
    with pytest.raises(ValueError, match=r"discrete training is defined for VP \(DDPM\) and VE"):
        losses.get_loss_fn(SDES["subvp"], continuous=False)
    with pytest.raises(ValueError, match="continuous"):
        losses.get_loss_fn(SDES["vp"], continuous=False, likelihood_weighting=True)
    with pytest.raises(ValueError, match="eps"):
        losses.get_loss_fn(SDES["vp"], eps=0.0)


def test_loss_is_sharding_invariant_and_jittable():
    """Same key, same loss, whether the global batch lives on one device or is split
    over eight (times and noise are drawn for the global batch)."""
    if jax.device_count() < 8:
        pytest.skip("needs the 8 fake CPU devices of conftest.py")
    score_fn = lambda x, t: -x * (1.0 + t)[:, None, None, None]
    loss_fns = [
        losses.get_loss_fn(SDES["vp"]),
        losses.get_loss_fn(SDES["ve"], continuous=False),
    ]
    step = jax.jit(lambda key, x: [fn(score_fn, key, x) for fn in loss_fns])
    x = jax.random.normal(jax.random.key(14), (16, 4, 4, 1))
    mesh = jax.make_mesh((8,), ("data",))
    key = jax.random.key(15)
    single = step(key, jax.device_put(x, jax.devices()[0]))
    sharded = step(key, jax.device_put(x, NamedSharding(mesh, P("data"))))
    np.testing.assert_allclose(sharded, single, rtol=1e-6)


# ------------------------------------------------- EDM preconditioning and objective


def _edm_sigma_np(name, t):
    scale, std = _np_marginal(name, t)
    return scale, std / scale


@pytest.mark.parametrize("name", SDES)
def test_edm_preconditioning_of_a_zero_network_is_the_gaussian_score(name):
    """F = 0 leaves D = c_skip x_hat: the exact denoiser, hence the exact score, of data
    N(0, sigma_data^2 I) under every SDE."""
    sde = SDES[name]
    x = jax.random.normal(jax.random.key(20), (5, 2, 2, 1)) * 3.0
    t = jnp.array([1e-3, 0.1, 0.4, 0.7, 1.0])
    zero_net = lambda x, c: jnp.zeros_like(x)
    edm_score = score.get_score_fn(sde, zero_net, preconditioning="edm", sigma_data=S)
    exact = score.mixture_score_fn(sde, np.zeros((1, 4)), [S])
    got, expected = jax.jit(lambda x, t: (edm_score(x, t), exact(x, t)))(x, t)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", SDES)
def test_edm_preconditioning_scales_input_and_output(name):
    """The network sees c_in x_hat (unit variance for data of std sigma_data) and the SDE's
    own c_noise; its output enters the score as sigma_data F / (sigma sqrt(v) s)."""
    sde = SDES[name]
    x = jax.random.normal(jax.random.key(21), (3, 2, 2, 1))
    t = jnp.array([0.01, 0.5, 1.0])
    seen = []

    def net_fn(x_in, c_noise):
        jax.debug.callback(lambda *a: seen.extend(a), x_in, c_noise, ordered=True)
        return 0.3 * x_in + 1.0

    score_fn = score.get_score_fn(sde, net_fn, preconditioning="edm", sigma_data=S)
    got = jax.jit(score_fn)(x, t)
    jax.effects_barrier()
    x_in, c_noise = (np.asarray(a, np.float64) for a in seen)
    tn, xn = np.asarray(t, np.float64), np.asarray(x, np.float64)
    scale, sigma = _edm_sigma_np(name, tn)
    scale, sigma = _bcast(np.broadcast_to(scale, tn.shape), xn), _bcast(sigma, xn)
    v = sigma**2 + S**2
    x_hat = xn / scale
    np.testing.assert_allclose(x_in, x_hat / np.sqrt(v), rtol=1e-4)
    np.testing.assert_allclose(c_noise, np.asarray(score.noise_conditioning(sde, t)), rtol=1e-5)
    denoised = S**2 / v * x_hat + sigma * S / np.sqrt(v) * (0.3 * x_in + 1.0)
    np.testing.assert_allclose(got, (denoised - x_hat) / (sigma**2 * scale), rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("name", SDES)
def test_edm_loss_of_the_zero_network_on_gaussian_data_is_one(name):
    """For data N(0, sigma_data^2 I) and F = 0 the EDM target has unit variance at every
    noise level, so the loss is 1 per dimension whatever the levels drawn."""
    sde = SDES[name]
    d, batch = 2, 65536
    x = S * jax.random.normal(jax.random.key(22), (batch, d))
    zero_net = lambda x, c: jnp.zeros_like(x)
    score_fn = score.get_score_fn(sde, zero_net, preconditioning="edm", sigma_data=S)
    mean_fn = losses.get_loss_fn(sde, objective="edm", sigma_data=S)
    sum_fn = losses.get_loss_fn(sde, objective="edm", sigma_data=S, reduce_mean=False)
    both = jax.jit(lambda k, x: (mean_fn(score_fn, k, x), sum_fn(score_fn, k, x)))
    mean_loss, sum_loss = map(float, both(jax.random.key(23), x))
    assert abs(mean_loss - 1.0) < 4 * np.sqrt(2.0 / (d * batch)), mean_loss
    np.testing.assert_allclose(sum_loss, d * mean_loss, rtol=1e-5)


@pytest.mark.parametrize("name", SDES)
def test_edm_loss_draws_lognormal_levels_with_edm_weights(name):
    sde = SDES[name]
    x = jax.random.normal(jax.random.key(24), (4096, 2))
    calls = []

    def recording_score(x_t, t):
        jax.debug.callback(
            lambda *a: calls.append([np.asarray(v, np.float64) for v in a]), x_t, t, ordered=True
        )
        return -0.7 * x_t

    loss_fn = losses.get_loss_fn(sde, objective="edm", p_mean=-1.0, p_std=0.8, sigma_data=S)
    value = jax.jit(lambda k, x: loss_fn(recording_score, k, x))(jax.random.key(25), x)
    jax.effects_barrier()
    (x_t, t), = calls
    scale, sigma = _edm_sigma_np(name, t)
    log_sigma = np.log(sigma)
    assert abs(log_sigma.mean() + 1.0) < 4 * 0.8 / np.sqrt(4096), log_sigma.mean()
    # VE clips the levels below sigma_min = 0.01 (ln = -4.6, 4.5 std away): std unchanged.
    assert abs(log_sigma.std() - 0.8) < 0.05, log_sigma.std()
    std = scale * sigma
    z = (x_t - _bcast(scale, x_t) * np.asarray(x, np.float64)) / _bcast(std, x_t)
    terms = np.sum((-0.7 * x_t * _bcast(std, x_t) + z) ** 2, axis=1) / 2
    expected = np.mean(terms * (sigma**2 + S**2) / S**2)
    np.testing.assert_allclose(value, expected, rtol=2e-4)


def test_edm_loss_clips_levels_to_the_sde_range():
    sde = SDES["ve"]
    seen = []

    def recording_score(x_t, t):
        jax.debug.callback(lambda t: seen.append(np.asarray(t)), t, ordered=True)
        return jnp.zeros_like(x_t)

    for p_mean in (10.0, -20.0):  # far above sigma_max = 50, far below sigma_min = 0.01
        loss_fn = losses.get_loss_fn(sde, objective="edm", p_mean=p_mean, p_std=0.5)
        loss_fn(recording_score, jax.random.key(26), jnp.ones((8, 2)))
    jax.effects_barrier()
    np.testing.assert_allclose(seen[0], 1.0, rtol=1e-5)
    np.testing.assert_allclose(seen[1], EPS, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"objective": "edn"}, r"unknown objective 'edn'; known: dsm, edm"),
        ({"objective": "edm", "continuous": False}, r"objective='edm' is continuous-time"),
        ({"objective": "edm", "likelihood_weighting": True}, r"objective='edm' is continuous"),
        ({"objective": "edm", "sigma_data": 0.0}, r"p_std > 0 and sigma_data > 0"),
    ],
)
def test_loss_fn_refuses_bad_objectives(kwargs, message):
    with pytest.raises(ValueError, match=message):
        losses.get_loss_fn(SDES["vp"], **kwargs)


def test_score_fn_refuses_bad_preconditioning():
    net = lambda x, c: x
    known = r"known: \['edm', 'none', 'v', 'velocity'\]"
    with pytest.raises(ValueError, match=r"unknown preconditioning 'edn'; " + known):
        score.get_score_fn(SDES["vp"], net, preconditioning="edn")
    with pytest.raises(ValueError, match=r"preconditioning='edm' needs continuous training"):
        score.get_score_fn(SDES["vp"], net, continuous=False, preconditioning="edm")
    with pytest.raises(ValueError, match=r"sigma_data must be positive, got -1"):
        score.get_score_fn(SDES["vp"], net, preconditioning="edm", sigma_data=-1.0)
