"""The sampler sweeps' shared vocabulary: named variants of the registered samplers and the
step count that spends a given number of score evaluations (bench/sampler_nfe.py,
bench/ve_gap.py)."""

from pathlib import Path

import jax

from diffusion import sampling

# Entries of the sweep besides the registered samplers run with their defaults:
# name -> (sampler, options besides the step count). PC runs the Langevin corrector (what
# distinguishes it from its predictor alone); EDM's stochastic sampler takes the churn
# settings of its ImageNet-64 runs (Karras et al., 2022, Table 5); DPM-Solver++ with
# eta = 1 is SDE-DPM-Solver++(2M), eta = 0.5 half its noise.
VARIANTS: dict[str, tuple[str, dict]] = {
    "pc": ("pc", {"predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16}),
    "edm_heun_churn": ("edm_heun", {"S_churn": 40.0, "S_min": 0.05, "S_max": 50.0,
                                    "S_noise": 1.003}),
    "dpm_solver_pp_sde": ("dpm_solver_pp", {"eta": 1.0}),
    "dpm_solver_pp_eta0.5": ("dpm_solver_pp", {"eta": 0.5}),
}


def variant(name: str) -> tuple[str, dict]:
    """(registered sampler, options) of a sweep entry: a variant, or a sampler by itself."""
    return VARIANTS.get(name, (name, {}))


def common_options(config) -> dict:
    """The config's final time and denoising, shared by every sampler of the sweep."""
    return {"eps": float(config.sampling.eps), "denoise": bool(config.sampling.noise_removal)}


def _nfe_of(name: str, sde, steps: int, common: dict, options: dict) -> int:
    """The nfe a fixed-step sampler reports for `steps`, from a one-example run of a
    closed-form score (cheap and exact: the count does not depend on the score)."""
    sampler = sampling.get_sampler(name, sde, (1, 1), steps=steps, **common, **options)
    return int(sampler(jax.random.key(0), lambda x, t: -x)[1])


def steps_for_nfe(name: str, sde, target: int, common: dict, options: dict) -> int | None:
    """The most steps whose nfe is at most `target` (nfe is affine in steps), or None."""
    one, two = (_nfe_of(name, sde, s, common, options) for s in (1, 2))
    per_step, fixed = two - one, 2 * one - two
    if one > target:
        return None
    steps = max(1, (target - fixed) // per_step)
    while steps > 1 and _nfe_of(name, sde, steps, common, options) > target:
        steps -= 1
    return steps


def finish_plot(fig, ax, results: dict, path: Path, *, xlabel: str, title: str) -> None:
    """The real floors, log axes, legend and grid of an FD-against-NFE plot; saved to
    `path` and closed."""
    import matplotlib.pyplot as plt

    ax.axhline(results["floor"]["fd"], color="k", ls="--", lw=1,
               label="real floor (stratified test split)")
    if "floor_iid" in results:
        ax.axhline(results["floor_iid"]["fd"], color="k", ls=":", lw=1,
                   label="real floor (i.i.d. real digits)")
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="FD (digits features)",
           title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
