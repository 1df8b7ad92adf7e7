"""One evaluation protocol for every model: samples and real data through the same feature
network, the same metrics, and the real-data floor beside every number.

This module holds the protocol's pieces: the metric names and their checks, the feature
network, :func:`compare` and :class:`SampleEvaluator` (reference features and the floors).
`evaluation.runner` assembles them into a report (and picks `evaluation.points` for 2-D
data: that module builds on this one, so this one never imports it).

Protocol (recorded in every report):
- The reference set is the whole train split. The floor compares the test split with it;
  the model's samples are compared with it in the same way.
- Sample-size-sensitive metrics (FD, precision/recall) are computed at the same size on
  both sides, `eval_size = min(n_fake, n_test)`: the floor on the first `eval_size` test
  images, the model on each disjoint `eval_size` chunk of its samples (mean and std over
  chunks). KID is unbiased and uses subsets of min(1000, eval_size).
- Classifier score, class histogram and conditional accuracy use every sample.
- The i.i.d. floor: a test split is often stratified by class (the digits split is), and
  an i.i.d. sampler cannot match its class counts, which at a few hundred images move FD
  more than anything else. So FD also gets the floor of i.i.d. real data:
  `IID_FLOOR_SPLITS` random (unstratified) draws of `eval_size` images from train + test,
  each against `n_train` of the others, mean and std. A perfect model scores about this.
- Bits/dim: the whole test split, by `evaluation.bpd` (see there).
- 2-D toy data (`toy_*`) is measured by `evaluation.points`: the same sample metrics on
  the coordinates, and `nll` (nats per point) in place of bits/dim.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from data import pipeline
from errors import RequestError, UserError
from evaluation import metrics as M
from evaluation.extractor import FeatureExtractor

METRICS = ("fd", "kid", "pr", "cs", "bpd", "nll")
IID_FLOOR_SPLITS = 50
SAMPLE_METRICS = ("fd", "kid", "pr", "cs")
LIKELIHOOD_METRICS = ("bpd", "nll")  # images, 2-D points


def parse_metrics(text: str) -> tuple[str, ...]:
    """'fd,kid' -> ('fd', 'kid'); unknown names are a RequestError naming them."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise RequestError(f"unknown metric {unknown[0]!r}; known: {', '.join(METRICS)}")
    if not names:
        raise RequestError(f"no metrics asked for; choose from {', '.join(METRICS)}")
    return names


def is_points(config: Any) -> bool:
    """True for the 2-D toy datasets."""
    return config.data.dataset.startswith(pipeline.TOY_PREFIX)


def check_metrics_fit_data(config: Any, which: tuple[str, ...]) -> None:
    """Bits/dim is for images and nll for 2-D points; the other one is a RequestError."""
    dataset = config.data.dataset
    if is_points(config) and "bpd" in which:
        raise RequestError(f"bits/dim is for 8-bit images, and dataset {dataset!r} is 2-D "
                           "points: ask for nll (nats per point) instead")
    if not is_points(config) and "nll" in which:
        raise RequestError(f"nll (nats per point) is for 2-D toy points, and dataset "
                           f"{dataset!r} is images: ask for bpd (bits/dim) instead")


def get_extractor(config: Any, *, feature_net: str = "auto", inception_weights: str = "",
                  batch_size: int = 500) -> FeatureExtractor:
    """The configured feature network: the project's digits CNN on digits, else Inception."""
    dataset = config.data.dataset
    if is_points(config):
        raise UserError(f"dataset {dataset!r} is 2-D points, which have no image feature "
                        "network: evaluation.points measures them on their coordinates")
    if feature_net == "auto":
        feature_net = "digits_cnn" if dataset == "digits" else "inception"
    if feature_net == "digits_cnn":
        if dataset != "digits":
            raise UserError(f"feature network 'digits_cnn' is for digits, not {dataset!r}")
        from evaluation import digits_features

        return digits_features.make_digits_extractor(
            data_dir=config.data.data_dir, batch_size=batch_size
        )
    if feature_net == "inception":
        if not inception_weights:
            raise UserError(
                f"dataset {dataset!r} is measured with Inception-v3 features: pass "
                "--inception_weights PATH (pt_inception-2015-12-05-6726825d.pth)"
            )
        from evaluation import inception
        from networks.torch_state_dict import WeightsError

        try:
            return inception.make_inception_extractor(inception_weights, batch_size=50)
        except WeightsError as err:
            raise UserError(str(err)) from err
    raise UserError(f"unknown feature network {feature_net!r}; known: auto, digits_cnn, inception")


@dataclasses.dataclass(frozen=True)
class Features:
    features: np.ndarray
    logits: np.ndarray


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i * size, (i + 1) * size) for i in range(n // size)]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def compare(reference: Features, other: Features, *, which: tuple[str, ...], eval_size: int,
            num_classes: int, seed: int, labels: np.ndarray | None = None) -> dict[str, Any]:
    """The sample metrics of `other` against `reference` under the protocol above."""
    out: dict[str, Any] = {}
    chunks = _chunks(len(other.features), eval_size)
    if "fd" in which:
        fds = [M.fd_from_features(reference.features, other.features[c]) for c in chunks]
        out["fd"], out["fd_std"] = _mean_std(fds)
    if "kid" in which:
        out["kid"], out["kid_std"] = M.kernel_inception_distance(
            reference.features, other.features, subset_size=min(1000, eval_size), seed=seed
        )
    if "pr" in which:
        pairs = [M.precision_recall(reference.features, other.features[c]) for c in chunks]
        out["precision"], out["precision_std"] = _mean_std([p for p, _ in pairs])
        out["recall"], out["recall_std"] = _mean_std([r for _, r in pairs])
    if "cs" in which:
        out["classifier_score"] = M.classifier_score(other.logits)
        if num_classes:
            counts = M.class_histogram(other.logits, num_classes)
            out["class_counts"] = counts.tolist()
            out["class_entropy"] = M.normalized_entropy(counts)
    if labels is not None and num_classes:
        out["conditional_accuracy"] = M.conditional_accuracy(other.logits, labels)
    return out


class SampleEvaluator:
    """Reference features, the real-data floor and the feature network, built once.

    `evaluator(images, labels=None) -> metrics` then scores uint8 samples; the training
    loop holds one to evaluate every `eval_freq` steps.
    """

    def __init__(self, config: Any, which: tuple[str, ...], *, inception_weights: str = ""):
        self.which = tuple(m for m in which if m in SAMPLE_METRICS)
        self.seed = int(config.eval.seed)
        data_config = config.data
        self.extractor = get_extractor(
            config, feature_net=config.eval.feature_net,
            inception_weights=inception_weights or config.eval.inception_weights,
            batch_size=int(config.eval.batch_size),
        )
        info = pipeline.get_info(data_config)
        # Class statistics only where the feature network classifies the dataset's classes.
        self.num_classes = info.num_classes if info.num_classes == self.extractor.num_classes else 0
        self.image_shape = tuple(info.shape)
        train = pipeline.read_split(data_config, "train")
        self.test = pipeline.read_split(data_config, "test")
        self.n_train, self.n_test = len(train["image"]), len(self.test["image"])
        self.reference = Features(*self.extractor(train["image"]))
        self.test_features = Features(*self.extractor(self.test["image"]))

    def __call__(self, images: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
        eval_size = min(len(images), self.n_test)
        return compare(self.reference, Features(*self.extractor(images)), which=self.which,
                       eval_size=eval_size, num_classes=self.num_classes, seed=self.seed,
                       labels=labels)

    def floor(self, n_fake: int) -> dict[str, Any]:
        """The same metrics for the first min(n_fake, n_test) test images vs train."""
        eval_size = min(n_fake, self.n_test)
        test = Features(self.test_features.features[:eval_size],
                        self.test_features.logits[:eval_size])
        floor = compare(self.reference, test, which=self.which, eval_size=eval_size,
                        num_classes=self.num_classes, seed=self.seed)
        if self.num_classes and "cs" in self.which:
            floor["classifier_accuracy"] = M.conditional_accuracy(
                test.logits, self.test["label"][:eval_size]
            )
        return floor

    def iid_floor(self, n_fake: int) -> dict[str, Any]:
        """FD of i.i.d. real images: random splits of train + test into `eval_size` images
        and `n_train` others (see the module docstring); seeded by `config.eval.seed`."""
        eval_size = min(n_fake, self.n_test)
        pool = np.concatenate([self.reference.features, self.test_features.features])
        rng = np.random.default_rng([self.seed, eval_size])
        fds = []
        for _ in range(IID_FLOOR_SPLITS):
            order = rng.permutation(len(pool))
            held, rest = order[:eval_size], order[eval_size:eval_size + self.n_train]
            fds.append(M.fd_from_features(pool[rest], pool[held]))
        fd, fd_std = _mean_std(fds)
        return {"fd": fd, "fd_std": fd_std, "splits": IID_FLOOR_SPLITS}

    @property
    def feature_dim(self) -> int:
        return self.extractor.feature_dim

    def describe(self) -> dict[str, Any]:
        return {"name": self.extractor.name, "sha256": self.extractor.checksum,
                "feature_dim": self.extractor.feature_dim, **self.extractor.settings}


def check_sample_count(which: tuple[str, ...], n_fake: int, evaluator: Any) -> None:
    """Fails early, before sampling or training, if a metric in `which` could not be
    computed on `min(n_fake, evaluator.n_test)` samples (the size both sides use)."""
    size, dim = min(n_fake, evaluator.n_test), evaluator.feature_dim
    if "fd" in which and size <= dim:
        raise RequestError(f"Fréchet distance needs more samples than feature dimensions: got "
                           f"{size} samples of {dim}-dimensional features")
    if "kid" in which and size < M.KID_MIN_SUBSET_SIZE:
        raise RequestError(f"KID needs subsets of at least {M.KID_MIN_SUBSET_SIZE} samples per "
                           f"set: got {size}")
    if "pr" in which and size <= M.PR_NEIGHBOURS:
        raise RequestError(f"precision/recall with k = {M.PR_NEIGHBOURS} nearest neighbours "
                           f"needs more than {M.PR_NEIGHBOURS} samples per set: got {size}")
