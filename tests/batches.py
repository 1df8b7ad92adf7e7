"""What the data tests share: comparing batches served by the pipeline."""

import numpy as np


def assert_batches_equal(left, right):
    """Two lists of batches hold the same keys and the same values, batch for batch."""
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
