"""evaluate.py on 2-D toy data (evaluation/points.py): the sample metrics on the
coordinates, the mixture's components as classes, nll in nats per point beside the true
density's, and the refusals that keep bits/dim and nll each to its own kind of data."""

import json
import os
import re
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest

from data import toy
from errors import UserError
from evaluation import points, protocol, runner, samples_file
from tests import cli_zygote
from tests.configs import tiny
from training import eval_hook, inference, loop

ROOT = Path(__file__).resolve().parents[1]
TOY = f"{ROOT / 'tests' / 'configs' / 'tiny.py'}:toy"


def _toy_config(dataset: str = "toy_gmm"):
    config = tiny.get_config("toy")
    config.data.dataset = dataset
    config.data.num_toy_samples = 3000
    config.data.num_toy_test_samples = 1000
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Two steps of the toy MLP, a checkpoint after each."""
    workdir = tmp_path_factory.mktemp("toy_run")
    config = tiny.get_config("toy")
    config.training.snapshot_freq = 1
    loop.run(config, workdir, devices=jax.devices()[:1])
    return workdir


def test_true_mixture_samples_score_at_the_floor_and_a_collapsed_sampler_does_not():
    evaluator = points.PointsEvaluator(_toy_config(), ("fd", "kid", "pr", "cs"))
    assert (evaluator.n_train, evaluator.n_test) == (3000, 1000)
    floor = evaluator.floor(1000)
    good = evaluator(toy.gmm(np.random.default_rng(7), 1000))
    for key in ("fd", "precision", "recall", "class_entropy", "near_mode"):
        assert good[key] == pytest.approx(floor[key], abs=0.03), key
    assert good["class_entropy"] > 0.99 and sum(good["class_counts"]) == 1000
    # 98.9% of a 2-D Gaussian lies within 3 std of its mean (chi-square, 2 dof, at 9).
    assert good["near_mode"] == pytest.approx(1 - np.exp(-4.5), abs=0.01)
    collapsed = toy.gmm_means()[0] + toy.GMM_STD * np.random.default_rng(8).normal(
        size=(1000, 2))
    bad = evaluator(collapsed.astype(np.float32))
    assert bad["class_counts"][0] > 990 and bad["class_entropy"] < 0.05
    assert bad["recall"] < 0.2 and bad["fd"] > 100 * floor["fd"]
    assert bad["near_mode"] > 0.98  # every point is a good one; the modes are what is lost
    assert evaluator.iid_floor(1000) is None  # the toy test split is i.i.d. already


def test_component_logits_are_the_bayes_posterior_of_the_mixture():
    x = np.array([[2.0, 0.1], [-0.1, -1.9], [0.3, 0.2]], np.float32)
    logits = points.component_logits(x)
    # p(k | x) = N(x; mu_k, s^2 I) / 8 / p(x), with p(x) the mixture's density.
    var = toy.GMM_STD**2
    component_density = np.stack([
        np.exp(-0.5 * np.sum((x - m) ** 2, axis=1) / var) / (2 * np.pi * var)
        for m in toy.gmm_means()], 1)
    posterior = component_density / 8 / np.exp(toy.gmm_log_prob(x.astype(np.float64)))[:, None]
    np.testing.assert_allclose(jax.nn.softmax(logits), posterior, atol=1e-5)
    assert list(logits.argmax(1)) == [0, 6, 1]


def test_near_mode_counts_points_within_three_stds_of_a_mean():
    means = toy.gmm_means()
    inside = means + np.array([2.9 * toy.GMM_STD, 0.0])
    outside = means + np.array([0.0, 3.1 * toy.GMM_STD])
    assert points.near_mode_share(np.concatenate([inside, outside])) == 0.5


def test_class_metrics_are_refused_for_toy_data_without_components():
    with pytest.raises(UserError, match=r"^metric 'cs' scores mixture components, and dataset "
                                        r"'toy_moons' has none; leave it out "
                                        r"\(--metrics fd,pr,nll\)$"):
        points.PointsEvaluator(_toy_config("toy_moons"), ("fd", "cs", "pr", "nll"))
    evaluator = points.PointsEvaluator(_toy_config("toy_moons"), ("fd", "pr"))
    assert evaluator.num_classes == 0 and set(evaluator.floor(500)) >= {"fd", "precision"}


def test_bits_per_dim_and_nll_are_each_refused_on_the_other_kind_of_data():
    with pytest.raises(UserError, match=r"^bits/dim is for 8-bit images, and dataset "
                                        r"'toy_gmm' is 2-D points: ask for nll"):
        protocol.check_metrics_fit_data(_toy_config(), ("fd", "bpd"))
    with pytest.raises(UserError, match=r"^nll \(nats per point\) is for 2-D toy points, "
                                        r"and dataset 'digits' is images: ask for bpd"):
        protocol.check_metrics_fit_data(tiny.get_config("vpsde"), ("nll",))


class _ExactGmmFamily:
    """What negative_log_likelihood needs of a family, with the true toy_gmm density as
    the model (no network, no ODE)."""

    capabilities = frozenset({"likelihood"})

    def sample_params(self, state):
        return state

    def make_log_likelihood(self, **options):
        def log_likelihood(params, key, x):
            return toy.gmm_log_prob(np.asarray(x, np.float64)), 7

        return log_likelihood


def test_nll_covers_the_whole_test_split_and_equals_the_true_density_for_the_true_model():
    config = _toy_config()
    config.eval.batch_size = 300  # 1,000 test points: the last batch is padded and masked
    out = points.negative_log_likelihood(config, _ExactGmmFamily(), None)
    exact = points.exact_nll(config)
    assert out["nll_settings"]["n_test"] == 1000 and out["nll_settings"]["unit"] == (
        "nats per point")
    assert out["nll"] == pytest.approx(exact["nll"], rel=1e-12)
    assert out["nll_sem"] == pytest.approx(exact["nll_sem"], rel=1e-9)
    # The entropy of the mixture: log 8 + the entropy of one 2-D Gaussian (modes disjoint).
    entropy = np.log(8) + np.log(2 * np.pi * np.e * toy.GMM_STD**2)
    assert exact["nll"] == pytest.approx(entropy, abs=3 * exact["nll_sem"])
    assert points.exact_nll(_toy_config("toy_swiss_roll")) == {}


def test_points_files_are_read_and_bad_ones_refused(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, points=np.zeros((5, 2), np.float64), sampler=np.str_("pc"), nfe=np.int64(4))
    samples = samples_file.load_samples(good, (2,))
    assert samples.images.shape == (5, 2) and samples.images.dtype == np.float32
    assert samples.provenance == {"sampler": "pc", "nfe": 4}
    cases = {
        "images.npz": ({"images": np.zeros((5, 2), np.float32)},
                       r"has no 'points' array, which 2-D toy data needs \(keys: \['images'\]\)"),
        "shape.npz": ({"points": np.zeros((5, 3), np.float32)},
                      r"points have shape \(5, 3\), expected \(N, 2\)"),
        "ints.npz": ({"points": np.zeros((5, 2), np.int32)}, "points must be floats, got int32"),
        "nan.npz": ({"points": np.array([[0.0, np.nan], [1.0, 1.0]])}, "1 points are not finite"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(UserError, match=message):
            samples_file.load_samples(tmp_path / name, (2,))


def test_the_points_report_has_every_metric_and_the_true_density_as_nll_floor(trained):
    config = tiny.get_config("toy")
    config.eval.bpd_rtol = config.eval.bpd_atol = 1e-3
    config.eval.bpd_divergence = "exact"
    report = eval_hook.evaluate(config, trained, which=("fd", "kid", "pr", "cs", "nll"),
                             num_samples=64)
    model, floor = report["model"], report["real_floor"]
    for key in ("fd", "kid", "precision", "recall", "classifier_score", "class_entropy",
                "near_mode", "nll"):
        assert np.isfinite(model[key]) and key in floor, key
    assert floor["nll"] == pytest.approx(points.exact_nll(config)["nll"])
    assert model["nll_settings"]["n_test"] == 64 and model["nll_settings"]["divergence"] == (
        "exact")
    # Two training steps: far from the data, which the true density scores well.
    assert model["nll"] > floor["nll"] and model["fd"] > 10 * floor["fd"]
    assert "real_floor_iid" not in report
    assert report["feature_network"]["feature_dim"] == 2 and report["n_real_reference"] == 512
    table = runner.format_table(report)
    assert "NLL (nats/point)" in table and "reference: 512 train points" in table


def test_training_can_report_point_metrics_and_nll(trained):
    config = tiny.get_config("toy")
    config.eval.metrics_during_training = "fd,cs,nll"
    config.eval.num_samples = 64
    config.eval.bpd_rtol = config.eval.bpd_atol = 1e-3
    family, state, _ = inference.restore_latest(config, trained)
    out = eval_hook.TrainingEvaluator(config, family)(state)
    assert {"eval/fd", "eval/class_entropy", "eval/near_mode", "eval/nll"} <= set(out)
    assert all(np.isfinite(v) for v in out.values())


def _env() -> dict[str, str]:
    env = os.environ.copy()
    env["XLA_FLAGS"] = env["XLA_FLAGS"].replace("--xla_force_host_platform_device_count=8", "")
    return env


def _cli(*args: str) -> subprocess.CompletedProcess:
    return cli_zygote.run("evaluate.py", f"--config={TOY}", *args, timeout=600, env=_env())


def test_the_cli_scores_a_points_file_and_refuses_bits_per_dim_in_one_line(trained, tmp_path):
    samples = tmp_path / "points.npz"
    np.savez(samples, points=toy.gmm(np.random.default_rng(3), 64), sampler=np.str_("file"))
    out = tmp_path / "m.json"
    proc = _cli(f"--workdir={trained}", f"--samples={samples}", "--metrics=fd,pr,cs",
                f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["samples"]["sampler"] == "file" and report["model"]["class_entropy"] > 0.8
    assert "near a mode" in proc.stdout
    refused = _cli(f"--workdir={trained}", "--metrics=fd,bpd", f"--out={tmp_path / 'x.json'}")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    errors = [line for line in refused.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "ask for nll" in errors[0], refused.stderr
    assert not (tmp_path / "x.json").exists()


def test_an_earlier_checkpoint_is_sampled_and_scored_when_asked_for(trained, tmp_path):
    config = tiny.get_config("toy")
    report = eval_hook.evaluate(config, trained, which=("fd",), num_samples=64, checkpoint_step=1)
    assert report["samples"]["step"] == 1
    newest = eval_hook.evaluate(config, trained, which=("fd",), num_samples=64)
    assert newest["samples"]["step"] == 2
    out = tmp_path / "s.npz"
    proc = cli_zygote.run("sample.py", f"--config={TOY}", f"--workdir={trained}",
                          "--checkpoint_step=1", "--num_samples=8", f"--out={out}",
                          timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as npz:
        assert int(npz["step"]) == 1 and npz["points"].shape == (8, 2)


@pytest.mark.parametrize(("flags", "message", "status"), [
    (["--checkpoint_step=7"], r"no checkpoint at step 7 in .* \(it has \[1, 2\]\)$", 1),
    (["--checkpoint_step=-1"], r"--checkpoint_step must be >= 0, got -1$", 2),
    (["--checkpoint_step=1", "--samples={samples}", "--metrics=fd"],
     r"a checkpoint step was given, but nothing here reads a checkpoint: the samples come "
     r"from a file and no likelihood metric is asked for$", 2),
])
def test_a_checkpoint_step_that_cannot_be_used_is_one_line(trained, tmp_path, flags, message,
                                                           status):
    samples = tmp_path / "points.npz"
    np.savez(samples, points=np.zeros((8, 2), np.float32))
    out = tmp_path / "m.json"
    proc = _cli(f"--workdir={trained}", f"--out={out}",
                *(flag.format(samples=samples) for flag in flags))
    assert proc.returncode == status and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and re.search(message, errors[0]), proc.stderr
    assert not out.exists()
