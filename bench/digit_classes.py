"""Class histogram of generated digits by a logistic-regression classifier trained on the
digits train split: a quick, dependency-free check that samples cover all ten classes.

    python bench/digit_classes.py runs/digits_vp/samples.npz

(The evaluation issue replaces this with the project's CNN features and FD/KID/PR.)
"""

import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import digits_vp
from data import pipeline


def _split(config, split: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for batch in pipeline.make_eval_iterator(config.data, batch_size=256, split=split):
        keep = batch["mask"]
        xs.append(batch["image"][keep].reshape(keep.sum(), -1))
        ys.append(batch["label"][keep])
    return np.concatenate(xs), np.concatenate(ys)


def main() -> None:
    config = digits_vp.get_config()
    config.data.centered = False  # features in [0, 1], as the samples are stored (uint8/255)
    x_train, y_train = _split(config, "train")
    x_test, y_test = _split(config, "test")
    clf = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    print(f"classifier test accuracy: {clf.score(x_test, y_test):.3f} ({len(y_test)} images); "
          f"mean top-class probability on real test digits: "
          f"{clf.predict_proba(x_test).max(1).mean():.3f}")
    samples = np.load(sys.argv[1])["images"].astype(np.float32) / 255.0
    probs = clf.predict_proba(samples.reshape(len(samples), -1))
    counts = np.bincount(probs.argmax(1), minlength=10)
    share = counts / counts.sum()
    entropy = -(share[share > 0] * np.log(share[share > 0])).sum() / np.log(10)
    print(f"samples: {len(samples)}; per class 0-9: {counts.tolist()}")
    print(f"normalised class entropy: {entropy:.3f}; mean top-class probability: "
          f"{probs.max(1).mean():.3f}")


if __name__ == "__main__":
    main()
