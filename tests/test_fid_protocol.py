"""The literature's FID protocol (evaluation/fid_protocol.py): the statistics file, the
Fréchet distance against a direct computation, the reference cache (computed once, then
reused) and the one-line refusals. A tiny fake feature network stands in for Inception:
nothing here runs a real 50k evaluation."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from errors import UserError
from evaluation import fid_protocol as fp
from evaluation import protocol, runner
from evaluation.extractor import FeatureExtractor
from tests import cli_zygote
from tests.configs import tiny
from training import eval_hook

ROOT = Path(__file__).resolve().parents[1]
DIM = 8  # the fake network's feature dimension


def _stats(d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4 * d, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)
    return x.mean(0), np.cov(x, rowvar=False)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- the statistics file


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stats_npz_round_trip(tmp_path, dtype):
    mu, sigma = _stats(DIM)
    path = tmp_path / "stats.npz"
    # As pytorch-fid's --save-stats writes it: np.savez(path, mu=mu, sigma=sigma).
    np.savez(path, mu=mu.astype(dtype), sigma=sigma.astype(dtype))
    mu2, sigma2 = fp.read_stats(path, DIM)
    assert mu2.dtype == sigma2.dtype == np.float64
    np.testing.assert_array_equal(mu2, mu.astype(dtype))
    np.testing.assert_array_equal(sigma2, sigma.astype(dtype))
    # Ours (atomic, float64, extra keys are ignored by readers); no temporary is left.
    fp.write_stats(tmp_path / "ours.npz", mu, sigma, key="{}")
    np.testing.assert_array_equal(fp.read_stats(tmp_path / "ours.npz", DIM)[1], sigma)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.npz", "stats.npz"]


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"mu": np.zeros(DIM)}, "no 'sigma' array (has: mu)"),
        ({"m": np.zeros(DIM), "s": np.eye(DIM)}, "no 'mu' array"),
        ({"mu": np.zeros(DIM + 1), "sigma": np.eye(DIM)}, "mu has shape (9,), expected (8,)"),
        ({"mu": np.zeros(DIM), "sigma": np.eye(DIM)[:4]},
         "sigma has shape (4, 8), expected (8, 8)"),
        ({"mu": np.zeros(DIM, np.int64), "sigma": np.eye(DIM)},
         "mu has dtype int64, expected float32 or float64"),
        ({"mu": np.full(DIM, np.nan), "sigma": np.eye(DIM)}, "mu contains NaN"),
    ],
)
def test_bad_stats_files_are_one_line_naming_the_problem(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(UserError) as err:
        fp.read_stats(path, DIM)
    assert message in _one_line(err) and str(path) in str(err.value)


def test_standard_shapes_are_checked_and_unreadable_files_refused(tmp_path):
    mu, sigma = _stats(DIM)
    np.savez(tmp_path / "small.npz", mu=mu, sigma=sigma)
    with pytest.raises(UserError) as err:  # the default is Inception's 2048
        fp.read_stats(tmp_path / "small.npz")
    assert "expected (2048,)" in _one_line(err)
    (tmp_path / "junk.npz").write_bytes(b"not a zip file\n" * 3)
    with pytest.raises(UserError) as err:
        fp.read_stats(tmp_path / "junk.npz", DIM)
    assert "not a readable .npz" in _one_line(err)
    with pytest.raises(UserError) as err:
        fp.read_stats(tmp_path / "missing.npz", DIM)
    assert "no such file" in _one_line(err)


# ---------------------------------------------------------------- the distance


def test_fd_of_identical_statistics_is_zero():
    mu, sigma = _stats(DIM)
    assert abs(fp.frechet_distance(mu, sigma, mu, sigma)) < 1e-9


def test_fd_matches_the_direct_computation_on_two_gaussian_sets():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((500, DIM)) @ rng.standard_normal((DIM, DIM))
    b = rng.standard_normal((400, DIM)) @ rng.standard_normal((DIM, DIM)) + 0.5
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    # pytorch-fid's formula, with scipy's sqrtm of the product.
    direct = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
              - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real))
    np.testing.assert_allclose(fp.frechet_distance(mu1, s1, mu2, s2), direct, rtol=1e-9)


def test_streamed_statistics_equal_np_cov():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1003, DIM)) * 3.0 + 100.0  # far from 0: the shifted sums
    images = np.arange(len(x))
    mu, sigma = fp.image_statistics(images, lambda idx: x[idx], chunk=97)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- the reference cache


class _FakeNetwork:
    """A fixed random projection of the pixels to DIM features; counts its calls."""

    def __init__(self, checksum: str = "f" * 64):
        self.calls = 0
        self.projection = np.random.default_rng(0).standard_normal((64, DIM)) / 64
        self.checksum = checksum

    def apply_batch(self, images: np.ndarray):
        self.calls += 1
        flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
        return flat @ self.projection, np.zeros((len(images), 10), np.float32)

    def extractor(self, *args, **kwargs) -> FeatureExtractor:
        return FeatureExtractor(name="fake", checksum=self.checksum, feature_dim=DIM,
                                num_classes=10, settings={"resize": "none"},
                                apply_batch=self.apply_batch, batch_size=100)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    network = _FakeNetwork()
    monkeypatch.setattr(protocol, "get_extractor", network.extractor)
    monkeypatch.setenv("SCOREGEN_CACHE_DIR", str(tmp_path / "cache"))
    return network


def _config():
    config = tiny.get_config("vpsde")
    config.eval.inception_weights = "fake.pth"  # the fake network reads nothing
    return config


def test_reference_statistics_are_computed_once_and_then_reused(fake, tmp_path, caplog):
    first = fp.make_evaluator(_config(), 100)
    computed = fake.calls
    assert computed == 15  # the 1,437 train digits in batches of 100
    assert first.reference["source"] == "computed"
    cached = Path(first.reference["path"])
    assert cached.parent == tmp_path / "cache" / "fid" and cached.name.startswith("digits-train-")
    assert json.loads(str(np.load(cached)["key"]))["feature_network"] == "fake"
    caplog.set_level("INFO")
    second = fp.make_evaluator(_config(), 100)
    assert fake.calls == computed  # not recomputed
    assert second.reference["source"] == "cache" and second.reference["path"] == str(cached)
    assert "reusing the cache" in caplog.text
    np.testing.assert_array_equal(second.sigma, first.sigma)
    # Another network (another weights checksum) is another key, so another file.
    fake.checksum = "0" * 64
    third = fp.make_evaluator(_config(), 100)
    assert third.reference["source"] == "computed" and third.reference["path"] != str(cached)


def test_a_corrupt_cache_file_is_recomputed(fake):
    path = Path(fp.make_evaluator(_config(), 100).reference["path"])
    path.write_bytes(b"truncated")
    again = fp.make_evaluator(_config(), 100)
    assert again.reference["source"] == "computed" and fake.calls == 30
    fp.read_stats(path, DIM)  # rewritten, whole


def test_a_users_statistics_file_is_used_as_given(fake, tmp_path):
    mu, sigma = _stats(DIM)
    path = tmp_path / "fid_stats_digits_train.npz"
    np.savez(path, mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))
    evaluator = fp.make_evaluator(_config(), 100, reference=str(path))
    assert fake.calls == 0 and evaluator.reference["source"] == "file"
    assert len(evaluator.reference["sha256"]) == 64
    assert not (tmp_path / "cache").exists()  # nothing cached


def test_the_runner_reports_fid_of_a_samples_file_with_its_settings(fake, tmp_path):
    from data import pipeline

    train = pipeline.read_split(_config().data, "train")["image"]
    np.savez(tmp_path / "s.npz", images=train[:300])
    report = eval_hook.evaluate(_config(), tmp_path, which=("fd", "kid"), protocol=fp.FID50K,
                             samples_path=str(tmp_path / "s.npz"))
    assert report["protocol"] == "fid50k" and report["num_samples"] == 300
    assert report["metrics_asked"] == ["fd"] and set(report["model"]) == {"fid"}
    assert report["feature_network"]["name"] == "fake"
    assert report["reference"]["source"] == "computed"
    assert report["reference"]["num_images"] == len(train)
    assert 0 <= report["model"]["fid"] < 0.01  # a subset of train against train
    table = runner.format_table(report)
    assert "FID (fid50k, 300 samples)" in table and "digits train split (1437" in table


# ---------------------------------------------------------------- refusals


def test_missing_inception_weights_are_one_line_saying_how_to_pass_them():
    with pytest.raises(UserError) as err:
        fp.make_evaluator(tiny.get_config("vpsde"), 50_000)
    assert "pass --inception_weights PATH" in _one_line(err)


def test_too_few_samples_and_points_are_refused(fake):
    with pytest.raises(UserError) as err:
        fp.make_evaluator(_config(), DIM)
    assert "more samples than feature dimensions" in _one_line(err)
    assert fake.calls == 0  # refused before any statistics
    with pytest.raises(UserError, match="2-D points"):
        fp.make_evaluator(tiny.get_config("toy"), 100)
    with pytest.raises(UserError, match="unknown evaluation protocol 'fid10k'"):
        fp.check_protocol("fid10k")


def test_the_cli_without_inception_weights_is_one_line(tmp_path):
    env = os.environ.copy()
    env["XLA_FLAGS"] = env["XLA_FLAGS"].replace("--xla_force_host_platform_device_count=8", "")
    proc = cli_zygote.run(
        "evaluate.py", f"--config={ROOT / 'tests/configs/tiny.py'}", f"--workdir={tmp_path}",
        "--protocol=fid50k", timeout=600, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "pass --inception_weights PATH" in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []
