"""Where a digits FD comes from: its mean and covariance terms, and how many samples the
digits classifier is unsure of, for real test digits and for sample files side by side.

    python bench/fd_anatomy.py runs/digits_vp/samples.npz other.npz ...

Each row takes the first 360 images (the test split's size, so every row has the floor's
sample count) against the 1,437 train digits, on evaluate.py's digits_cnn features:
FD = ||mu - mu_train||^2 (mean term) + the covariance term. "unsure" is the share of
images whose top class has probability below 0.9 under the same classifier; the classifier
score and class entropy are evaluate.py's.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import digits_vp
from data import pipeline
from evaluation import metrics
from evaluation.digits_features import make_digits_extractor

ROWS = 360  # the test split's size
UNSURE_BELOW = 0.9


def anatomy(extractor, images: np.ndarray, reference: tuple[np.ndarray, np.ndarray]) -> dict:
    """FD terms and confidence figures of the first ROWS images."""
    features, logits = extractor(images[:ROWS])
    mu, cov = metrics.feature_statistics(features)
    fd = metrics.frechet_distance(mu, cov, *reference)
    mean_term = float(np.sum((mu - reference[0]) ** 2))
    logits = logits.astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return {
        "n": len(features),
        "fd": fd,
        "mean_term": mean_term,
        "cov_term": fd - mean_term,
        "unsure": float(np.mean(probs.max(axis=1) < UNSURE_BELOW)),
        "classifier_score": metrics.classifier_score(logits),
        "class_entropy": metrics.normalized_entropy(metrics.class_histogram(logits, 10)),
    }


def main() -> None:
    paths = sys.argv[1:]
    if not paths:
        sys.exit("usage: python bench/fd_anatomy.py SAMPLES.npz [MORE.npz ...]")
    data = digits_vp.get_config().data
    extractor = make_digits_extractor(data_dir=data.get("data_dir"))
    train = pipeline.read_split(data, "train")["image"]
    reference = metrics.feature_statistics(extractor(train)[0])
    rows = [("real test digits", pipeline.read_split(data, "test")["image"])]
    for path in paths:
        try:
            rows.append((path, np.load(path)["images"]))
        except (OSError, KeyError, ValueError) as err:
            sys.exit(f"{path}: cannot read its 'images' ({err})")
    print(f"| images (first {ROWS}) | FD | mean term | covariance term | unsure "
          f"(top class < {UNSURE_BELOW}) | classifier score | class entropy |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, images in rows:
        a = anatomy(extractor, images, reference)
        print(f"| {name} | {a['fd']:.3f} | {a['mean_term']:.3f} | {a['cov_term']:.3f} | "
              f"{a['unsure']:.3f} | {a['classifier_score']:.2f} | {a['class_entropy']:.3f} |")


if __name__ == "__main__":
    main()
