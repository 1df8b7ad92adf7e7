"""Samplers on problems with a known answer (closed-form scores, no networks), the true nfe
of every sampler, the shared pieces, the config helper and the errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffusion import sampling, score, sde_lib

SDES = {
    "vp": sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "subvp": sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "ve": sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000),
}
# Step counts at which each sampler's discretisation error is well below sampling noise.
SAMPLER_CASES = {
    "euler_maruyama": {"steps": 200},
    "reverse_diffusion": {"steps": 200},
    "ancestral": {"steps": 200},
    "pc": {"steps": 100},
    "annealed_langevin": {"steps": 300, "snr": 0.6},
    "ode": {},
    "euler": {"steps": 500},
    "heun": {"steps": 50},
    # 30 steps: the two-mode mixture needs them (the Gaussian alone is recovered at 10-20
    # steps, see test_fast_samplers.py); sub-VP, with sigma(eps) = 1e-4, is the slowest.
    "edm_heun": {"steps": 30},
    "dpm_solver_pp": {"steps": 30},
    # Uniform in t (flow matching's grid; tests/test_flow_matching.py covers the paths):
    # on VE that wastes steps at high noise, hence many.
    "flow_euler": {"steps": 500},
    "flow_heun": {"steps": 100},
}
# (sampler, SDE) pairs that must be refused, with the refusal.
REFUSED = {
    ("ancestral", "subvp"): "ancestral sampling is defined for VP .DDPM. and VE .SMLD. SDEs, "
    "not subVPSDE",
    ("annealed_langevin", "vp"): "annealed_langevin .* VE SDEs, not VPSDE",
    ("annealed_langevin", "subvp"): "annealed_langevin .* VE SDEs, not subVPSDE",
}

# N(MU, S^2 I) in three dimensions.
MU, S = np.array([1.0, -1.0, 0.5]), 0.5
# Two well-separated modes with unequal mass (the mixture tests use the first two dims;
# MIX3 is the same mixture padded to three dims).
MIX_MEANS = np.array([[-1.5, 0.5], [1.5, -0.5]])
MIX_STD, MIX_WEIGHTS = 0.3, np.array([0.3, 0.7])
N_SAMPLES = 4000


def _counting(score_fn, counter):
    """``score_fn`` that bumps ``counter[0]`` on the host at every (runtime) evaluation."""

    def bump():
        counter[0] += 1

    def counted(x, t):
        jax.debug.callback(bump)
        return score_fn(x, t)

    return counted


def test_samplers_registry():
    assert {
        "euler_maruyama", "reverse_diffusion", "ancestral", "pc", "annealed_langevin", "ode",
        "euler", "heun", "edm_heun", "dpm_solver_pp", "flow_euler", "flow_heun",
    } == set(sampling.SAMPLERS)  # fmt: skip
    assert set(SAMPLER_CASES) == set(sampling.SAMPLERS)
    assert {"ancestral", "none"} <= set(sampling.PREDICTORS)
    assert {"langevin", "annealed_langevin", "none"} <= set(sampling.CORRECTORS)


@pytest.mark.parametrize("name", SAMPLER_CASES)
@pytest.mark.parametrize("sde_name", SDES)
def test_sampler_recovers_gaussian_and_mixture(sde_name, name):
    """Two problems through one compiled sampler (the data parameters are traced): the
    Gaussian N(MU, S^2 I) and a two-mode mixture, both in three dimensions."""
    if (name, sde_name) in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[name, sde_name]):
            sampling.get_sampler(name, SDES[sde_name], (N_SAMPLES, 3), **SAMPLER_CASES[name])
        return
    _assert_recovers_gaussian_and_mixture(SDES[sde_name], name, SAMPLER_CASES[name])


@pytest.mark.parametrize("sde_name", SDES)
def test_dpm_solver_pp_as_an_sde_solver_recovers_gaussian_and_mixture(sde_name):
    """eta = 1: SDE-DPM-Solver++(2M), fresh noise at every step (more steps than the ODE
    solver: a first-order noise term)."""
    _assert_recovers_gaussian_and_mixture(
        SDES[sde_name], "dpm_solver_pp", {"steps": 100, "eta": 1.0}
    )


def _assert_recovers_gaussian_and_mixture(sde, name, options):
    sampler = sampling.get_sampler(name, sde, (N_SAMPLES, 3), **options)

    @jax.jit
    def run(key, means, stds, weights):
        return sampler(key, score.mixture_score_fn(sde, means, stds, weights))[0]

    mix_means = np.pad(MIX_MEANS, ((0, 0), (0, 1)))
    x_g = run(jax.random.key(0), np.stack([MU, MU]), np.full(2, S), np.full(2, 0.5))
    x_m = run(jax.random.key(1), mix_means, np.full(2, MIX_STD), MIX_WEIGHTS)
    x_g, x_m = np.asarray(x_g, np.float64), np.asarray(x_m, np.float64)
    assert np.all(np.isfinite(x_g)) and np.all(np.isfinite(x_m))
    # Sampling noise: mean 0.5/sqrt(4000) = 0.008, relative std 1/sqrt(8000) = 0.011.
    np.testing.assert_allclose(x_g.mean(0), MU, atol=0.05)
    np.testing.assert_allclose(x_g.std(0), S, rtol=0.07)
    # Mass per mode: standard error sqrt(0.21 / 4000) = 0.007.
    right = x_m[:, 0] > 0
    assert abs(right.mean() - MIX_WEIGHTS[1]) < 0.045
    for mode, members in ((0, ~right), (1, right)):
        np.testing.assert_allclose(x_m[members].mean(0), mix_means[mode], atol=0.06)
        np.testing.assert_allclose(x_m[members].std(0), MIX_STD, rtol=0.1)


@pytest.mark.parametrize(
    ("name", "options", "expected", "sde_name"),
    [
        ("euler_maruyama", {"steps": 7}, 7 + 1, "vp"),
        ("reverse_diffusion", {"steps": 5, "denoise": False}, 5, "vp"),
        ("ancestral", {"steps": 6}, 6 + 1, "vp"),
        ("pc", {"steps": 4, "n_corrector_steps": 3, "predictor": "reverse_diffusion"}, 17, "vp"),
        ("pc", {"steps": 4, "predictor": "none", "corrector": "annealed_langevin"}, 5, "subvp"),
        ("annealed_langevin", {"steps": 3, "n_corrector_steps": 2}, 3 * 2 + 1, "ve"),
        ("ode", {"steps": 5}, 1 + 6 * 5 + 1, "vp"),
        ("ode", {}, None, "vp"),
        ("ode", {"solver": "dopri5", "rtol": 1e-3, "atol": 1e-3}, None, "vp"),
        ("euler", {"steps": 5, "denoise": False}, 5, "vp"),
        ("heun", {"steps": 5, "time_grid": "uniform"}, 2 * 5 + 1, "subvp"),
        ("edm_heun", {"steps": 4}, 2 * 4 + 1, "vp"),
        ("edm_heun", {"steps": 4, "S_churn": 10.0, "denoise": False}, 2 * 4, "ve"),
        ("dpm_solver_pp", {"steps": 5}, 5 + 1, "vp"),
        ("dpm_solver_pp", {"steps": 5, "time_grid": "uniform", "denoise": False}, 5, "ve"),
        ("dpm_solver_pp", {"steps": 5, "eta": 1.0}, 5 + 1, "subvp"),
    ],
)
def test_nfe_is_the_number_of_score_evaluations(name, options, expected, sde_name):
    sde = SDES[sde_name]
    counter = [0]
    score_fn = _counting(score.mixture_score_fn(sde, MIX_MEANS, [MIX_STD] * 2), counter)
    sampler = sampling.get_sampler(name, sde, (8, 2), **options)
    x, nfe = jax.jit(lambda key: sampler(key, score_fn))(jax.random.key(1))
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert np.all(np.isfinite(x))
    assert int(nfe) == counter[0]
    if expected is not None:
        assert isinstance(nfe, int) or nfe.shape == ()
        assert int(nfe) == expected


def test_ode_nfe_counts_rejected_steps_and_first_stage_reevaluations():
    """A deliberately oscillating vector field makes the adaptive solver reject steps,
    including attempts from the initial point, where an FSAL solver re-evaluates its first
    stage. The reported nfe must still equal the evaluations made."""
    sde = SDES["vp"]
    counter = [0]
    score_fn = _counting(lambda x, t: -x * (1.0 + 50.0 * jnp.sin(50.0 * t))[:, None], counter)
    sampler = sampling.get_sampler("ode", sde, (8, 2), denoise=False)
    x, nfe = jax.jit(lambda key: sampler(key, score_fn))(jax.random.key(2))
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert int(nfe) == counter[0]
    # Tsit5 costs 6 per attempt plus one per attempt from t = T: nfe = 1 (mod 6) unless
    # the first step was rejected, which is the case this test is about.
    assert int(nfe) % 6 != 1


def test_compiled_graph_does_not_grow_with_steps():
    sde = SDES["ve"]
    score_fn = score.mixture_score_fn(sde, MIX_MEANS, [MIX_STD] * 2)
    for name in sorted(set(sampling.SAMPLERS) - {"ode"}):
        sizes = []
        for steps in (3, 300):
            sampler = sampling.get_sampler(name, sde, (4, 2), steps=steps)
            jaxpr = jax.make_jaxpr(lambda k, s=sampler: s(k, score_fn))(jax.random.key(0))
            sizes.append(len(jaxpr.eqns))
        assert sizes[0] == sizes[1], (name, sizes)


@pytest.mark.parametrize(
    ("name", "options"),
    [("pc", {"steps": 3}), ("ode", {}), ("edm_heun", {"steps": 3, "S_churn": 5.0})],
)
def test_image_batches_and_determinism(name, options):
    """NHWC batches work (per-example scalars broadcast over H, W, C), and the sample is a
    function of the key alone."""
    sde = SDES["ve"]
    shape = (4, 3, 3, 2)
    score_fn = score.mixture_score_fn(sde, np.zeros((1, 18)), [1.0])  # N(0, I) data
    sampler = sampling.get_sampler(name, sde, shape, **options)
    run = jax.jit(lambda key: sampler(key, score_fn)[0])
    a, b, c = run(jax.random.key(3)), run(jax.random.key(3)), run(jax.random.key(4))
    assert a.shape == shape and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("sde_name", SDES)
def test_tweedie_denoise_is_the_posterior_mean(sde_name):
    sde = SDES[sde_name]
    score_fn = score.mixture_score_fn(sde, MU[None], [S])
    x = jax.random.normal(jax.random.key(5), (6, 3)) + MU
    t = 0.02
    got = jax.jit(lambda x: sampling.tweedie_denoise(sde, score_fn, x, t))(x)
    a = float(sde.marginal_scale(jnp.float32(t)))
    var = a**2 * S**2 + float(sde.marginal_std(jnp.float32(t))) ** 2
    expected = MU + a * S**2 / var * (np.asarray(x) - a * MU)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_time_grid():
    grid = np.asarray(sampling.time_grid(SDES["vp"], 4, 1e-3))
    np.testing.assert_allclose(grid, np.linspace(1.0, 1e-3, 5), rtol=1e-6)


def _config(**sampling_fields):
    return ml_collections.ConfigDict({"sampling": sampling_fields})


def test_get_sampler_from_config_maps_score_sde_fields(monkeypatch):
    sde = sde_lib.VPSDE(N=6)
    built = []
    monkeypatch.setattr(sampling, "get_sampler", lambda *a, **kw: built.append((a, kw)))
    pc = {
        "method": "pc",
        "predictor": "reverse_diffusion",
        "corrector": "langevin",
        "snr": 0.075,
        "n_steps_each": 2,
        "noise_removal": False,
    }
    sampling.get_sampler_from_config(_config(**pc), sde, (8, 2))
    sampling.get_sampler_from_config(_config(**pc, steps=4, eps=1e-2), sde, (8, 2))
    sampling.get_sampler_from_config(
        _config(method="ode", noise_removal=True, rtol=1e-3), sde, (8, 2)
    )
    # score_sde's names of the ancestral predictor and the annealed Langevin corrector.
    sampling.get_sampler_from_config(
        _config(method="pc", predictor="ancestral_sampling", corrector="ald", steps=3),
        sde,
        (8, 2),
    )
    # Any other sampler: steps and the options the config sets, by name.
    sampling.get_sampler_from_config(
        _config(method="DPM_Solver_PP", time_grid="uniform", steps=7, snr=0.3), sde, (8, 2)
    )
    sampling.get_sampler_from_config(
        _config(method="annealed_langevin", snr=0.3, n_steps_each=2), sde, (8, 2)
    )
    pc_options = {
        "predictor": "reverse_diffusion",
        "corrector": "langevin",
        "snr": 0.075,
        "n_corrector_steps": 2,
    }
    assert built == [
        (("pc", sde, (8, 2)), {"eps": 1e-3, "denoise": False, "steps": 6, **pc_options}),
        (("pc", sde, (8, 2)), {"eps": 1e-2, "denoise": False, "steps": 4, **pc_options}),
        (
            ("ode", sde, (8, 2)),
            {
                "eps": 1e-3,
                "denoise": True,
                "steps": None,
                "solver": "tsit5",
                "rtol": 1e-3,
                "atol": 1e-5,
                "max_steps": 4096,
            },
        ),
        (
            ("pc", sde, (8, 2)),
            {
                "eps": 1e-3,
                "denoise": True,
                "steps": 3,
                "predictor": "ancestral",
                "corrector": "annealed_langevin",
                "snr": 0.16,
                "n_corrector_steps": 1,
            },
        ),
        (
            ("dpm_solver_pp", sde, (8, 2)),
            {"eps": 1e-3, "denoise": True, "steps": 7, "time_grid": "uniform"},
        ),
        (
            ("annealed_langevin", sde, (8, 2)),
            {"eps": 1e-3, "denoise": True, "steps": None, "snr": 0.3, "n_corrector_steps": 2},
        ),
    ]


def test_get_sampler_from_config_end_to_end():
    sde = sde_lib.VPSDE(N=6)
    counter = [0]
    score_fn = _counting(score.mixture_score_fn(sde, MIX_MEANS, [MIX_STD] * 2), counter)
    config = _config(
        method="pc",
        predictor="reverse_diffusion",
        corrector="langevin",
        snr=0.16,
        n_steps_each=2,
        noise_removal=True,
    )
    sampler = sampling.get_sampler_from_config(config, sde, (8, 2))
    x, nfe = jax.jit(lambda key: sampler(key, score_fn))(jax.random.key(6))
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert int(nfe) == counter[0] == 6 * 3 + 1
    with pytest.raises(ValueError, match=r"'dpm_solver_pp'.*'ode'.*'pc'"):
        sampling.get_sampler_from_config(_config(method="ddim"), sde, (8, 2))
    with pytest.raises(ValueError, match="predictor"):
        sampling.get_sampler_from_config(_config(method="pc", predictor="leapfrog"), sde, (8, 2))
    # Another method end to end: EDM's sampler with the config's steps and churn.
    counter[0] = 0
    config = _config(method="edm_heun", steps=3, S_churn=1.0, noise_removal=False)
    sampler = sampling.get_sampler_from_config(config, sde, (8, 2))
    x, nfe = jax.jit(lambda key: sampler(key, score_fn))(jax.random.key(6))
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert int(nfe) == counter[0] == 2 * 3


def test_errors():
    sde = SDES["vp"]
    shape = (4, 2)
    with pytest.raises(ValueError, match=r"'euler_maruyama'.*'ode'.*'pc'.*'reverse_diffusion'"):
        sampling.get_sampler("ddim", sde, shape)
    for steps in (0, -3):
        with pytest.raises(ValueError, match="steps"):
            sampling.get_sampler("euler_maruyama", sde, shape, steps=steps)
    with pytest.raises(TypeError, match="steps"):
        sampling.get_sampler("pc", sde, shape, steps=2.5)
    with pytest.raises(TypeError, match="snr"):
        sampling.get_sampler("euler_maruyama", sde, shape, snr=0.1)
    with pytest.raises(TypeError, match="bogus"):
        sampling.get_sampler("pc", sde, shape, bogus=1)
    with pytest.raises(ValueError, match=r"'ancestral'.*'euler_maruyama'.*'none'"):
        sampling.get_sampler("pc", sde, shape, predictor="ancestral_sampling")
    with pytest.raises(ValueError, match=r"'annealed_langevin'.*'langevin'.*'none'"):
        sampling.get_sampler("pc", sde, shape, corrector="ald")
    with pytest.raises(ValueError, match="predictor or a corrector"):
        sampling.get_sampler("pc", sde, shape, predictor="none", corrector="none")
    with pytest.raises(ValueError, match=r"'dopri5'.*'tsit5'"):
        sampling.get_sampler("ode", sde, shape, solver="euler")
    with pytest.raises(ValueError, match="n_corrector_steps"):
        sampling.get_sampler("pc", sde, shape, n_corrector_steps=0)
    for eps in (0.0, 1.0):
        with pytest.raises(ValueError, match="eps"):
            sampling.get_sampler("ode", sde, shape, eps=eps)
    assert sampling.sampler_options("pc") == {
        "predictor": "euler_maruyama",
        "corrector": "langevin",
        "snr": 0.16,
        "n_corrector_steps": 1,
    }
    assert sampling.sampler_options("ancestral") == {}
    assert sampling.sampler_options("annealed_langevin") == {"snr": 0.316, "n_corrector_steps": 1}
    assert sampling.sampler_options("euler") == {"time_grid": "edm", "rho": 7.0}
    assert sampling.sampler_options("heun") == {"time_grid": "edm", "rho": 7.0}
    assert sampling.sampler_options("edm_heun") == {
        "S_churn": 0.0,
        "S_min": 0.0,
        "S_max": float("inf"),
        "S_noise": 1.0,
        "rho": 7.0,
    }
    assert sampling.sampler_options("dpm_solver_pp") == {"time_grid": "logsnr", "eta": 0.0}
