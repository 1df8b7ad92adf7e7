"""What every family shares: class labels to sample, the label check against the dataset,
and images to [0, 1]."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from errors import UserError


def balanced_labels(num: int, num_classes: int) -> np.ndarray:
    """0, 1, ..., K-1, 0, 1, ... (int32, `num` of them): equal classes, in order."""
    return (np.arange(num) % num_classes).astype(np.int32)


def sample_labels(labels, num: int, num_classes: int) -> np.ndarray | None:
    """The (num,) int32 labels to sample, checked against the classes: None for an
    unconditional model, 0..K-1 cycling when no labels are given."""
    if num_classes == 0:
        if labels is not None:
            raise UserError("class labels need a class-conditional model or a classifier; "
                            "this model is unconditional (model.num_classes=0)")
        return None
    if labels is None:
        return balanced_labels(num, num_classes)
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"class labels must be integers, got {labels.dtype}")
    if labels.shape not in ((), (num,)):
        raise UserError(f"class labels must be one int or ({num},), got {labels.shape}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise UserError(f"class label {int(bad.flat[0])} is out of range: the classes are "
                        f"0..{num_classes - 1}")
    return np.broadcast_to(labels, (num,)).astype(np.int32)


def check_num_classes(config: ml_collections.ConfigDict, info) -> int:
    """`model.num_classes` (0 = unconditional), which must be the dataset's class count."""
    num_classes = int(config.model.num_classes)
    if num_classes < 0:
        raise UserError(f"model.num_classes must be >= 0, got {num_classes}")
    if num_classes and num_classes != info.num_classes:
        raise UserError(
            f"model.num_classes={num_classes} but dataset {config.data.dataset!r} has "
            f"{info.num_classes} classes" + (" (no labels)" if not info.num_classes else "")
        )
    return num_classes


def to_unit_range(x: jax.Array, centered: bool) -> jax.Array:
    """Images from the data space ([-1, 1] if centered, else [0, 1]) to [0, 1]."""
    if centered:
        x = (x + 1.0) / 2.0
    return jnp.clip(x, 0.0, 1.0)
