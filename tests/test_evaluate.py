"""evaluate.py and the evaluation protocol: a full report with its floor and settings, and
bad input refused in one line with nothing written."""

import functools
import json
import os
import subprocess
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from errors import UserError
from evaluation import bpd, metrics, protocol, runner, samples_file
from tests import cli_zygote
from tests.cli_errors import error_line
from tests.configs import tiny
from tests.torch_files import contiguous, write_zip
from training import eval_hook, loop

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "configs" / "tiny.py")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = os.environ.copy()
    env["XLA_FLAGS"] = env["XLA_FLAGS"].replace("--xla_force_host_platform_device_count=8", "")
    return cli_zygote.run("evaluate.py", f"--config={TINY}", *args, timeout=600, env=env)



def _refused(workdir: Path, *flags: str, status: int = 2) -> str:
    """evaluate.py's one error line for `flags` (exit `status`: 2 for a flag error), having
    checked that nothing was written to the workdir (no metrics.json, nothing else)."""
    before = sorted(p.name for p in workdir.iterdir())
    line = error_line(_run(f"--workdir={workdir}", *flags), status)
    assert sorted(p.name for p in workdir.iterdir()) == before
    return line


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("run")
    loop.run(tiny.get_config("vpsde"), workdir, devices=jax.devices()[:1])
    return workdir


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)


def test_the_report_has_every_metric_its_floor_and_its_settings(trained):
    config = tiny.get_config("vpsde")
    config.eval.bpd_rtol = config.eval.bpd_atol = 1e-2  # loose: the report, not the value
    config.eval.batch_size = 360  # the whole test split in one likelihood batch
    # One device: bits/dim splits its batch over the devices, and 8 fake CPU devices on
    # 2 cores only add their overhead.
    report = eval_hook.evaluate(config, trained, which=("fd", "kid", "pr", "cs", "bpd"),
                             num_samples=100, devices=jax.devices()[:1])
    model, floor = report["model"], report["real_floor"]
    for key in ("fd", "kid", "kid_std", "precision", "recall", "classifier_score",
                "class_entropy", "bpd"):
        assert np.isfinite(model[key]), key
    assert set(floor) >= {"fd", "kid", "precision", "recall", "classifier_score"}
    assert len(model["class_counts"]) == 10 and sum(model["class_counts"]) == 100
    # An untrained model is far from the data, and real test digits are close to it.
    assert model["fd"] > 5 * floor["fd"] and floor["precision"] > 0.8
    assert 0 < model["bpd"] < 20
    fn = report["feature_network"]
    assert fn["name"] == "digits_cnn" and len(fn["sha256"]) == 64 and fn["test_accuracy"] >= 0.97
    assert report["samples"]["n_fake"] == 100 and report["samples"]["sampler"] == "pc"
    assert report["samples"]["nfe"] == 4  # 3 steps + denoising
    assert report["n_real_reference"] == 1437 and report["n_real_test"] == 360
    assert report["eval_size"] == 100 and report["seed"] == 0
    settings = model["bpd_settings"]
    assert settings["n_test"] == 360 and settings["dequantization"].startswith("uniform")
    assert settings["dequant_samples"] == 1 and settings["num_probes"] == 1
    iid = report["real_floor_iid"]
    assert iid["splits"] == protocol.IID_FLOOR_SPLITS and iid["fd"] > 0 and iid["fd_std"] > 0
    table = runner.format_table(report)
    assert "real floor" in table and "bits/dim" in table and "digits_cnn" in table
    assert "i.i.d. floor" in table and "50 random real splits" in table


def test_iid_real_digits_are_farther_from_train_than_the_stratified_test_split():
    """The digits test split is stratified by class; 360 real digits drawn at random
    (what a perfect i.i.d. sampler gives) are not, and their FD is more than twice the
    test split's: the floor a model can reach is the i.i.d. one. Seeded: repeatable."""
    evaluator = protocol.SampleEvaluator(tiny.get_config("vpsde"), ("fd",))
    iid = evaluator.iid_floor(1000)
    assert iid == evaluator.iid_floor(1000)
    assert iid["fd"] > 2 * evaluator.floor(1000)["fd"]
    assert evaluator.iid_floor(100)["fd"] > iid["fd"]  # FD is biased upwards at small n


def test_samples_file_is_used_as_given_with_its_provenance(tmp_path):
    samples = _npz(tmp_path / "s.npz", images=_digits(80), sampler=np.str_("ode"),
                   nfe=np.int64(57), labels=np.arange(80) % 10)
    out = tmp_path / "m.json"
    proc = _run(f"--workdir={tmp_path}", f"--samples={samples}", "--metrics=fd,cs",
                f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["samples"]["sampler"] == "ode" and report["samples"]["nfe"] == 57
    assert set(report["model"]) >= {"fd", "classifier_score", "conditional_accuracy"}
    assert "kid" not in report["model"] and "bpd" not in report["model"]
    assert "FD" in proc.stdout and "real floor" in proc.stdout


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"samples": _digits(80)}, "no 'images' array"),
        ({"images": _digits(80).astype(np.int32)}, "must be uint8"),
        ({"images": _digits(80).astype(np.float32)}, "must lie in [0, 1]"),
        ({"images": np.zeros((80, 16, 16, 1), np.uint8)}, "expected (N, 8, 8, 1)"),
        ({"images": _digits(80), "labels": np.zeros(3, np.int64)}, "labels must be integers"),
        ({"images": _digits(80), "labels": np.zeros(80, np.float32)},
         "labels must be integers of shape (80,), got float32 (80,)"),
        ({"images": _digits(80), "labels": np.arange(80) % 11},
         "labels must lie in [0, 10) (the data's classes), got values in [0, 10]"),
        ({"images": _digits(80), "labels": np.arange(80) % 10 - 1},
         "labels must lie in [0, 10) (the data's classes), got values in [-1, 8]"),
    ],
)
def test_bad_samples_files_are_refused_naming_the_problem(tmp_path, arrays, message):
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match=None) as err:
        samples_file.load_samples(path, (8, 8, 1), num_classes=10)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num_samples=40", "--metrics=fd"],
         "Fréchet distance needs more samples than feature dimensions: got 40 samples of "
         "64-dimensional features"),
        (["--num_samples=1", "--metrics=kid"],
         "KID needs subsets of at least 2 samples per set: got 1"),
        (["--num_samples=3", "--metrics=kid,pr"],
         "precision/recall with k = 3 nearest neighbours needs more than 3 samples per set: "
         "got 3"),
        (["--metrics=fd,fid"], "unknown metric 'fid'"),
    ],
)
def test_bad_requests_are_one_line_and_write_nothing(tmp_path, flags, message):
    samples = _npz(tmp_path / "s.npz", images=_digits(80))
    assert message in _refused(tmp_path, f"--samples={samples}", *flags)


def test_a_missing_inception_weights_file_is_one_line_and_writes_nothing(tmp_path):
    samples = _npz(tmp_path / "s.npz", images=_digits(80))
    message = _refused(tmp_path, f"--samples={samples}", "--config.eval.feature_net=inception",
                       "--inception_weights=/no/such.pth", status=1)
    assert "Inception weights file not found: /no/such.pth" in message


def test_too_few_samples_are_refused_before_any_checkpoint_is_read_or_sample_drawn(tmp_path):
    # The workdir holds no checkpoint: a check that came after restoring would say so.
    message = _refused(tmp_path, "--num_samples=3", "--metrics=pr,cs")
    assert "precision/recall with k = 3 nearest neighbours needs more than 3" in message


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"pictures": _digits(80)}, "has no 'images' array (keys: ['pictures'])"),
        ({"images": _digits(80).astype(np.int16)},
         "images must be uint8 (or float in [0, 1]), got int16"),
        ({"images": np.zeros((80, 28, 28, 1), np.uint8)},
         "images have shape (80, 28, 28, 1), expected (N, 8, 8, 1) for this config's data"),
        ({"images": _digits(80), "labels": np.arange(80) % 12},
         "labels must lie in [0, 10) (the data's classes), got values in [0, 11]"),
    ],
)
def test_bad_samples_files_from_the_cli_are_one_line_and_write_nothing(tmp_path, arrays,
                                                                        message):
    samples = _npz(tmp_path / "s.npz", **arrays)
    assert message in _refused(tmp_path, f"--samples={samples}", "--metrics=cs", status=1)


def test_inception_weights_of_the_wrong_shape_from_the_cli_are_one_line(tmp_path):
    # A torch zip file, as pytorch-fid ships its weights; the shape is checked key by key
    # before anything else is read into the network.
    weights = tmp_path / "pt_inception.pth"
    write_zip(weights, contiguous({"fc.weight": np.zeros((10, 2048), np.float32)}))
    samples = _npz(tmp_path / "s.npz", images=_digits(80))
    message = _refused(tmp_path, f"--samples={samples}", "--metrics=cs",
                       "--config.eval.feature_net=inception", f"--inception_weights={weights}",
                       status=1)
    assert message.endswith(f"error: Inception weights file {weights}: fc.weight has shape "
                            "(10, 2048), expected (1008, 2048)")


@pytest.mark.parametrize("metric, fewest", [("fd", 5), ("kid", 2), ("pr", 4)])
def test_the_sample_count_check_refuses_exactly_what_the_metric_cannot_compute(metric,
                                                                              fewest):
    """The up-front check and the metric agree: at `fewest` samples (4-D features) both
    go ahead, one fewer and the check refuses what the metric would fail on after all the
    sampling."""
    rng = np.random.default_rng(0)
    reference = protocol.Features(rng.normal(size=(50, 4)), np.zeros((50, 0)))
    evaluator = types.SimpleNamespace(n_test=360, feature_dim=4)
    for n, computable in ((fewest, True), (fewest - 1, False)):
        other = protocol.Features(rng.normal(size=(n, 4)), np.zeros((n, 0)))
        measure = functools.partial(protocol.compare, reference, other, which=(metric,),
                                    eval_size=n, num_classes=0, seed=0)
        if computable:
            protocol.check_sample_count((metric,), n, evaluator)
            assert all(np.isfinite(v) for v in measure().values())
        else:
            with pytest.raises(UserError, match=f"got {n}"):
                protocol.check_sample_count((metric,), n, evaluator)
            with pytest.raises(ValueError):
                measure()


def test_inception_weights_of_the_wrong_shape_are_refused_naming_the_key(tmp_path):
    from evaluation import inception

    shapes = inception.expected_shapes()
    arrays = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    arrays["fc.weight"] = np.zeros((10, 2048), np.float32)
    weights = _npz(tmp_path / "w.npz", **arrays)
    config = tiny.get_config("vpsde")
    with pytest.raises(UserError, match=r"fc\.weight.*\(10, 2048\).*\(1008, 2048\)"):
        protocol.get_extractor(config, feature_net="inception", inception_weights=str(weights))


def test_non_digits_data_without_inception_weights_says_what_to_pass():
    config = tiny.get_config("vpsde")
    config.data.dataset = "cifar10"
    with pytest.raises(UserError, match="pass --inception_weights PATH"):
        protocol.get_extractor(config)


def test_two_d_points_have_no_image_feature_network():
    config = tiny.get_config("vpsde")
    config.data.dataset = "toy_gmm"
    with pytest.raises(UserError, match=r"^dataset 'toy_gmm' is 2-D points, which have no "
                                        r"image feature network: evaluation.points"):
        protocol.get_extractor(config)


def test_the_floor_and_the_model_are_measured_at_the_same_size():
    rng = np.random.default_rng(0)
    reference = protocol.Features(rng.normal(size=(500, 4)), rng.normal(size=(500, 3)))
    other = protocol.Features(rng.normal(size=(250, 4)), rng.normal(size=(250, 3)))
    out = protocol.compare(reference, other, which=("fd", "pr"), eval_size=100,
                         num_classes=3, seed=0)
    # Two disjoint chunks of 100 (the remaining 50 are not used for FD/PR).
    fds = [metrics.fd_from_features(reference.features, other.features[s])
           for s in (slice(0, 100), slice(100, 200))]
    assert out["fd"] == pytest.approx(np.mean(fds)) and out["fd_std"] == pytest.approx(
        np.std(fds))


class _ClosedFormFamily:
    """What bits_per_dim needs of a family, with a closed-form log-density steep enough to
    vary within a quantization bin (no network, no ODE)."""

    data_shape = (8, 8, 1)
    is_image_data = True
    capabilities = frozenset({"likelihood"})

    def sample_params(self, state):
        return state

    def make_log_likelihood(self, **options):
        self.options = options
        return lambda params, key, x: (-300.0 * np.sum(np.asarray(x) + 1.0, axis=(1, 2, 3)), 7)


class _DeviceRecordingFamily(_ClosedFormFamily):
    """The closed form in jax, recording how each batch it is given is laid out."""

    def make_log_likelihood(self, **options):
        self.layouts = []

        def log_likelihood(params, key, x):
            placed = x.sharding if isinstance(x, jax.Array) else None  # else: host numpy
            self.layouts.append((x.shape[0], len(placed.device_set) if placed else 1,
                                 placed.shard_shape(x.shape)[0] if placed else x.shape[0]))
            return -300.0 * jnp.sum(x + 1.0, axis=(1, 2, 3)), 7

        return log_likelihood


@pytest.mark.parametrize("batch_size", [128, 36])
def test_bits_per_dim_splits_each_batch_over_the_devices_of_the_parameters(batch_size):
    """Parameters on a mesh of 8 devices: each device gets 1/8 of every batch (a batch of
    36 padded to 40), and the figures are those of the unsplit batches."""
    config = _bpd_config(1)
    config.eval.batch_size = batch_size
    family = _DeviceRecordingFamily()
    unsplit = bpd.bits_per_dim(config, family, None)  # no parameters on a mesh
    assert {devices for _, devices, _ in family.layouts} == {1}
    mesh = jax.make_mesh((8,), ("data",))
    params = jax.device_put(np.zeros(3, np.float32), NamedSharding(mesh, PartitionSpec()))
    split = bpd.bits_per_dim(config, family, params)
    padded = -(-batch_size // 8) * 8
    assert set(family.layouts[-len(family.layouts) // 2:]) == {(padded, 8, padded // 8)}
    assert split["bpd_settings"]["n_test"] == unsplit["bpd_settings"]["n_test"] == 360
    assert split["bpd"] == pytest.approx(unsplit["bpd"], rel=1e-6)
    assert split["bpd_sem"] == pytest.approx(unsplit["bpd_sem"], rel=1e-5)


def _bpd_config(dequant_samples: int):
    config = tiny.get_config("vpsde")
    config.eval.batch_size = 128  # 3 batches, the last one padded
    config.eval.bpd_dequant_samples = dequant_samples
    return config


def _uniform_bpd_per_image(config) -> np.ndarray:
    """The plain uniform-dequantization bits/dim of each test image, computed directly."""
    from data import pipeline
    from diffusion.likelihood import bits_per_dim

    data_config = dict(config.data.to_dict(), uniform_dequantization=True)
    out = []
    for batch in pipeline.make_eval_iterator(data_config, batch_size=128, split="test",
                                             seed=int(config.eval.seed)):
        logp, _ = _ClosedFormFamily().make_log_likelihood()(None, None, batch["image"])
        out.append(np.asarray(bits_per_dim(logp, (8, 8, 1), centered=True))[batch["mask"]])
    return np.concatenate(out)


def test_bits_per_dim_importance_weighted_dequantization_and_its_settings():
    family = _ClosedFormFamily()
    uniform = _uniform_bpd_per_image(_bpd_config(1))
    one = bpd.bits_per_dim(_bpd_config(1), family, None)
    assert family.options["num_probes"] == 1
    # K = 1 is the uniform dequantization, exactly as before the option existed.
    assert one["bpd"] == pytest.approx(float(uniform.mean()), rel=1e-6)
    assert one["bpd_settings"]["dequant_samples"] == 1 and one["bpd_settings"]["n_test"] == 360
    assert one["bpd_settings"]["dequantization"].startswith("uniform")
    four = bpd.bits_per_dim(_bpd_config(4), family, None)
    settings = four["bpd_settings"]
    assert settings["dequant_samples"] == 4 and settings["n_test"] == 360
    assert settings["dequantization"].startswith("importance-weighted over 4")
    assert settings["mean_nfe_per_batch"] == 7
    # A tighter bound: fewer bits/dim (each image gains ~0.1 bits/dim here).
    assert four["bpd"] < one["bpd"] - 0.05
    limited = bpd.bits_per_dim(_bpd_config(1), family, None, limit=50)
    assert limited["bpd_settings"]["n_test"] == 50
    assert limited["bpd"] == pytest.approx(float(uniform[:50].mean()), rel=1e-6)
    with pytest.raises(UserError, match="bpd_dequant_samples must be a positive integer"):
        bpd.bits_per_dim(_bpd_config(0), family, None)
