"""Where a digits FD comes from: its mean and covariance terms, how much of it is the
class counts, and how many samples the digits classifier is unsure of, for real test
digits and for sample files side by side.

    python bench/fd_anatomy.py runs/digits_vp/samples.npz other.npz ...

Each row takes the first 360 images (the test split's size, so every row has the floor's
sample count) against the 1,437 train digits, on evaluate.py's digits_cnn features:
FD = ||mu - mu_train||^2 (mean term) + the covariance term. "reweighted" is the FD of the
same images weighted so that their predicted classes have the train split's proportions
(the class-count part of FD removed; the test split is stratified, so its row barely
moves); "all" is the FD of every image in the file. "unsure" is the share of images whose
top class has probability below 0.9 under the same classifier; the classifier score and
class entropy are evaluate.py's.
"""

import sys
from pathlib import Path

import numpy as np
from scipy.special import softmax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import digits_vp
from errors import UserError
from evaluation import metrics, protocol, samples_file

UNSURE_BELOW = 0.9


def weighted_statistics(features: np.ndarray, weights: np.ndarray):
    """Mean and unbiased covariance of features under normalised weights."""
    w = np.asarray(weights, np.float64) / np.sum(weights)
    f = np.asarray(features, np.float64)
    mu = w @ f
    centred = f - mu
    return mu, (w[:, None] * centred).T @ centred / (1.0 - np.sum(w**2))


def class_reweighted_fd(features: protocol.Features, reference: tuple[np.ndarray, np.ndarray],
                        train_proportions: np.ndarray) -> float:
    """FD with each image weighted by p_train(c) / p_here(c) of its predicted class c."""
    classes = features.logits.argmax(axis=1)
    here = np.bincount(classes, minlength=len(train_proportions)) / len(classes)
    weights = train_proportions[classes] / here[classes]
    return metrics.frechet_distance(*weighted_statistics(features.features, weights),
                                    *reference)


def anatomy(features: protocol.Features, reference: tuple[np.ndarray, np.ndarray],
            train_proportions: np.ndarray) -> dict:
    """FD terms and confidence figures of these features against the reference statistics."""
    mu, cov = metrics.feature_statistics(features.features)
    fd = metrics.frechet_distance(mu, cov, *reference)
    mean_term = float(np.sum((mu - reference[0]) ** 2))
    top = softmax(features.logits.astype(np.float64), axis=1).max(axis=1)
    return {
        "fd": fd,
        "mean_term": mean_term,
        "cov_term": fd - mean_term,
        "reweighted": class_reweighted_fd(features, reference, train_proportions),
        "unsure": float(np.mean(top < UNSURE_BELOW)),
        "classifier_score": metrics.classifier_score(features.logits),
        "class_entropy": metrics.normalized_entropy(metrics.class_histogram(features.logits, 10)),
    }


def main() -> None:
    paths = sys.argv[1:]
    if not paths:
        sys.exit("usage: python bench/fd_anatomy.py SAMPLES.npz [MORE.npz ...]")
    # evaluate.py's evaluator: the digits features of the train (reference) and test splits.
    evaluator = protocol.SampleEvaluator(digits_vp.get_config(), ("fd",))
    rows_per_file = evaluator.n_test  # every row has the floor's sample count
    try:
        samples = [samples_file.load_samples(path, evaluator.image_shape).images for path in paths]
    except UserError as err:
        sys.exit(str(err))
    reference = metrics.feature_statistics(evaluator.reference.features)
    train_classes = evaluator.reference.logits.argmax(axis=1)
    proportions = np.bincount(train_classes, minlength=10) / len(train_classes)
    rows = [("real test digits", evaluator.test_features, None)]
    for path, images in zip(paths, samples, strict=True):
        every = protocol.Features(*evaluator.extractor(images))
        first = protocol.Features(every.features[:rows_per_file], every.logits[:rows_per_file])
        rows.append((path, first, every))
    print(f"| images (first {rows_per_file}) | FD | mean term | covariance term | FD, classes "
          f"reweighted to train's | FD of all (n) | unsure (top class < {UNSURE_BELOW}) | "
          "classifier score | class entropy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, features, every in rows:
        a = anatomy(features, reference, proportions)
        whole = "-" if every is None else (
            f"{metrics.fd_from_features(evaluator.reference.features, every.features):.3f} "
            f"({len(every.features)})")
        print(f"| {name} | {a['fd']:.3f} | {a['mean_term']:.3f} | {a['cov_term']:.3f} | "
              f"{a['reweighted']:.3f} | {whole} | {a['unsure']:.3f} | "
              f"{a['classifier_score']:.2f} | {a['class_entropy']:.3f} |")


if __name__ == "__main__":
    main()
