"""Datasets and input pipelines.

- `data.pipeline`: grain loaders (`get_info`, `make_train_iterator`, `make_eval_iterator`)
  for every dataset, re-exported here;
- `data.digits`: the embedded 8x8 digits as a TFDS dataset, prepared without TensorFlow;
- `data.sources`: reading prepared TFDS datasets (mnist, cifar10, celeb_a, ...);
- `data.toy`: 2-D toy distributions (`SAMPLERS`) with exact densities where they exist;
- `data.synthetic`: random images of any size, generated per index (`synthetic`);
- `data.datasets`: which dataset a config names, as records + decoder + `DatasetInfo`;
- `data.captions`: captions of the digits (training and held-out phrasings) for
  `data.captions=True`, which adds a `caption` row to every batch;
- `data.photos`: the photos scikit-image and scikit-learn ship, and the `photos` dataset
  of (content, style) crop pairs for feed-forward style transfer;
- `python -m data.prepare NAME --data_dir DIR`: prepare a dataset.

The re-exports are loaded on first use, so that importing a light module (`data.photos`,
`data.errors`) does not import grain and TFDS.
"""

import importlib
from typing import Any

__all__ = [
    "DataError",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "TrainIterator",
    "get_info",
    "make_eval_iterator",
    "make_train_iterator",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("data.pipeline"), name)
    raise AttributeError(f"module 'data' has no attribute {name!r}")
