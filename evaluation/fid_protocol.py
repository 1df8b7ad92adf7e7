"""The literature's FID protocol (FID-50k), beside the project's own ('floors',
`evaluation.protocol`).

FID-50k, as pytorch-fid and TTUR compute it (Heusel et al. 2017): `NUM_SAMPLES` samples of
the model through the FID Inception-v3 (pool3, 2048-d) against the Gaussian statistics
(mu, sigma) of the *whole train split* through the same network; the Fréchet distance of
the two Gaussians in float64 (`metrics.frechet_distance`: the trace term from symmetric
eigendecompositions, no scipy sqrtm). One number: no floors, no chunks. It is comparable
with papers only with the standard weights file and 50,000 samples; the report records the
sample count, the network's checksum and where the reference statistics came from.

Reference statistics are an `.npz` holding `mu` (D,) and `sigma` (D, D), float32 or
float64: the format of pytorch-fid's `--save-stats` and TTUR's `fid_stats_*.npz`. Either a
user's file (`--fid_reference`, `config.eval.fid_reference`), or computed once from the
train split and cached at `<cache dir>/fid/<dataset>-train-<key>.npz` (the cache dir of
`evaluation.digits_features`: `$SCOREGEN_CACHE_DIR`, else `$XDG_CACHE_HOME/scoregen`,
else `~/.cache/scoregen`), `<key>` a hash of what changes the numbers: the dataset, its
served shape and train size, the feature network's weights checksum and preprocessing.

The core is pure (features in, statistics out); :func:`make_evaluator` wires it to the
data and the Inception extractor. Nothing here imports `training/`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from errors import RequestError, UserError
from evaluation import metrics as M
from evaluation.extractor import FeatureExtractor

FLOORS, FID50K = "floors", "fid50k"
PROTOCOLS = (FLOORS, FID50K)
NUM_SAMPLES = 50_000
FEATURE_DIM = 2048  # Inception pool3
SPLIT = "train"
CHUNK = 5_000  # images per feature-extraction call: bounds the features held at once
_VERSION = 1  # of the cache key; bump when the statistics' computation changes


def check_protocol(name: str) -> str:
    """`name` if it is a known protocol, else a one-line UserError."""
    if name not in PROTOCOLS:
        raise UserError(f"unknown evaluation protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return name


# ------------------------------------------------------------------ statistics, in float64


class StatsAccumulator:
    """Mean and unbiased covariance (n - 1, as np.cov and pytorch-fid) of feature batches
    added one at a time, in float64. Sums are taken about the first batch's mean, which
    keeps the one-pass formula as accurate as the two-pass one for features far from 0."""

    def __init__(self) -> None:
        self.n, self.shift, self.total, self.outer = 0, None, None, None

    def add(self, features: np.ndarray) -> None:
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or not np.isfinite(x).all():
            raise ValueError(f"features must be a finite (N, D) array, got shape {x.shape}")
        if self.shift is None:
            d = x.shape[1]
            self.shift, self.total, self.outer = x.mean(0), np.zeros(d), np.zeros((d, d))
        x = x - self.shift
        self.n += len(x)
        self.total += x.sum(0)
        self.outer += x.T @ x

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError(f"statistics need at least 2 feature vectors, got {self.n}")
        mean = self.total / self.n
        sigma = (self.outer - self.n * np.outer(mean, mean)) / (self.n - 1)
        return mean + self.shift, (sigma + sigma.T) / 2


def image_statistics(images: np.ndarray, features: Callable[[np.ndarray], np.ndarray], *,
                     chunk: int = CHUNK, what: str = "images") -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of `features(images)`, the feature function called on chunks of `chunk`
    images (it batches within a chunk)."""
    acc = StatsAccumulator()
    for start in range(0, len(images), chunk):
        acc.add(features(images[start:start + chunk]))
        logging.info("FID features of %s: %d / %d", what, min(start + chunk, len(images)),
                     len(images))
    return acc.result()


frechet_distance = M.frechet_distance  # of N(mu1, sigma1) and N(mu2, sigma2), float64


# ------------------------------------------------------------------ the statistics file


def write_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray,
                **extra: Any) -> None:
    """`mu`, `sigma` (and `extra` scalars or strings) to an `.npz` at `path`, atomically:
    a reader, or a second process writing the same file, never sees half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64),
                     **{k: np.asarray(v) for k, v in extra.items()})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_stats(path: str | os.PathLike, dim: int = FEATURE_DIM) -> tuple[np.ndarray, np.ndarray]:
    """(mu (dim,), sigma (dim, dim)) as float64 from an `.npz` (float32 or float64); any
    problem is a one-line UserError naming the file."""
    where = f"FID reference statistics {path}"
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("mu", "sigma") if k not in f.files]
            if missing:
                raise UserError(f"{where}: no {missing[0]!r} array (has: "
                                f"{', '.join(f.files) or 'nothing'}); expected mu and sigma")
            mu, sigma = f["mu"], f["sigma"]
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{where}: no such file") from None
    except Exception as err:  # not a zip, truncated, pickled objects, ...
        raise UserError(f"{where}: not a readable .npz ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from None
    for name, a, shape in (("mu", mu, (dim,)), ("sigma", sigma, (dim, dim))):
        if a.dtype not in (np.float32, np.float64):
            raise UserError(f"{where}: {name} has dtype {a.dtype}, expected float32 or float64")
        if a.shape != shape:
            raise UserError(f"{where}: {name} has shape {a.shape}, expected {shape}")
        if not np.isfinite(a).all():
            raise UserError(f"{where}: {name} contains NaN or infinity")
    return mu.astype(np.float64), sigma.astype(np.float64)


# ------------------------------------------------------------------ the cache


def cache_dir() -> Path:
    """`<cache dir>/fid`, under the project's cache dir (`digits_features.cache_dir`)."""
    from evaluation import digits_features

    return digits_features.cache_dir() / "fid"


def reference_key(dataset: Mapping[str, Any], extractor: FeatureExtractor) -> dict[str, Any]:
    """Everything that decides the reference statistics (its hash names the cache file)."""
    return {"version": _VERSION, "dataset": dict(dataset), "split": SPLIT,
            "feature_network": extractor.name, "sha256": extractor.checksum,
            "feature_dim": extractor.feature_dim, "settings": dict(extractor.settings),
            "statistics": "mean and covariance (n - 1), float64"}


def cache_path(key: Mapping[str, Any], directory: str | os.PathLike | None = None) -> Path:
    """`<directory or cache_dir()>/<dataset>-train-<hash of key>.npz`."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    name = f"{key['dataset']['name']}-{key['split']}-{digest[:16]}.npz"
    return Path(directory or cache_dir()) / name


def reference_statistics(
    *, compute: Callable[[], tuple[np.ndarray, np.ndarray]], dim: int,
    user_file: str | os.PathLike | None = None, cached: str | os.PathLike | None = None,
    key: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(mu, sigma, source): from `user_file` if given (never written), else from the cache
    file `cached` if it holds valid statistics, else `compute()`, written to `cached`."""
    if user_file:
        mu, sigma = read_stats(user_file, dim)
        logging.info("FID reference statistics from %s", user_file)
        return mu, sigma, {"source": "file", "path": str(user_file)}
    cached = Path(cached)
    if cached.is_file():
        try:
            mu, sigma = read_stats(cached, dim)
            logging.info("FID reference statistics: reusing the cache %s", cached)
            return mu, sigma, {"source": "cache", "path": str(cached)}
        except UserError as err:
            logging.warning("%s; recomputing", err)
    logging.info("FID reference statistics: computing them from the %s split (once; "
                 "cached at %s)", SPLIT, cached)
    mu, sigma = compute()
    write_stats(cached, mu, sigma, key=json.dumps(key or {}, sort_keys=True, default=str))
    return mu, sigma, {"source": "computed", "path": str(cached)}


# ------------------------------------------------------------------ the protocol


@dataclasses.dataclass
class FIDEvaluator:
    """`evaluator(images) -> report fields`: FID of uint8 samples against the reference."""

    extractor: FeatureExtractor
    mu: np.ndarray
    sigma: np.ndarray
    reference: dict[str, Any]

    def features(self, images: np.ndarray) -> np.ndarray:
        return self.extractor(images)[0]

    def describe(self) -> dict[str, Any]:
        return {"name": self.extractor.name, "sha256": self.extractor.checksum,
                "feature_dim": self.extractor.feature_dim, **self.extractor.settings}

    def __call__(self, images: np.ndarray) -> dict[str, Any]:
        check_sample_count(len(images), self.extractor.feature_dim)
        if len(images) != NUM_SAMPLES:
            logging.warning("FID on %d samples, not %d: not comparable with FID-50k figures",
                            len(images), NUM_SAMPLES)
        mu, sigma = image_statistics(images, self.features, what="samples")
        return {"protocol": FID50K, "num_samples": len(images),
                "feature_network": self.describe(), "reference": self.reference,
                "model": {"fid": frechet_distance(mu, sigma, self.mu, self.sigma)}}


def check_sample_count(n: int, dim: int) -> None:
    if n <= dim:
        raise RequestError(f"FID needs more samples than feature dimensions: got {n} samples "
                           f"of {dim}-dimensional features (the protocol uses {NUM_SAMPLES})")


def make_evaluator(config: Any, num_samples: int, *, inception_weights: str = "",
                   reference: str = "") -> FIDEvaluator:
    """The FID-50k evaluator of `config`'s dataset: the FID Inception-v3 (weights from
    `inception_weights` or `config.eval.inception_weights`), the train split's statistics
    from `reference` (or `config.eval.fid_reference`) or the cache. Checks are done, in
    one line each, before any statistics are computed."""
    from data import pipeline
    from evaluation.protocol import get_extractor, is_points

    if is_points(config):
        raise UserError(f"the {FID50K} protocol is for images, and dataset "
                        f"{config.data.dataset!r} is 2-D points: use --protocol={FLOORS}")
    weights = inception_weights or config.eval.get("inception_weights", "")
    if not weights:
        raise UserError(f"the {FID50K} protocol needs the FID Inception-v3 weights, which "
                        "cannot be downloaded here: pass --inception_weights PATH "
                        "(pt_inception-2015-12-05-6726825d.pth) or set "
                        "config.eval.inception_weights")
    reference = reference or config.eval.get("fid_reference", "")
    if reference and not Path(reference).is_file():
        raise UserError(f"FID reference statistics {reference}: no such file")
    extractor = get_extractor(config, feature_net="inception", inception_weights=weights)
    check_sample_count(num_samples, extractor.feature_dim)
    info = pipeline.get_info(config.data)
    key = reference_key({"name": info.name, "shape": list(info.shape),
                         "num_images": info.num_train}, extractor)

    def compute() -> tuple[np.ndarray, np.ndarray]:
        images = pipeline.read_split(config.data, SPLIT)["image"]
        return image_statistics(images, lambda x: extractor(x)[0], what=f"the {SPLIT} split")

    mu, sigma, source = reference_statistics(
        compute=compute, dim=extractor.feature_dim, user_file=reference or None,
        cached=cache_path(key), key=key)
    if source["source"] == "file":  # made elsewhere: record which file, byte for byte
        source["sha256"] = hashlib.sha256(Path(reference).read_bytes()).hexdigest()
    else:
        source.update(dataset=info.name, split=SPLIT, num_images=info.num_train)
    return FIDEvaluator(extractor, mu, sigma, source)


def format_report(report: Mapping[str, Any]) -> str:
    """An FID-50k report in three lines: the number, the network, the reference."""
    fn, ref = report["feature_network"], report["reference"]
    return "\n".join([
        f"FID ({report['protocol']}, {report['num_samples']} samples): "
        f"{report['model']['fid']:.4f}",
        f"features: {fn['name']} pool3 ({fn['feature_dim']}), weights sha256 "
        f"{fn['sha256'][:12]}",
        f"reference: {ref['dataset']} {ref['split']} split ({ref['num_images']} images), "
        f"statistics {ref['source']} {ref['path']}" if ref["source"] != "file" else
        f"reference: statistics from {ref['path']} (sha256 {ref['sha256'][:12]})",
    ])
