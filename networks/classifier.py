"""A small CNN classifier whose penultimate layer is the project's digits feature space."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from networks.layers import Conv3x3

Array = jax.Array


class FeatureCNN(nnx.Module):
    """conv-conv-pool-conv-pool-dense classifier for small images (e.g. 8x8 digits).

    ``model(x)`` takes float images (B, H, W, C) in [0, 1] and returns
    ``(features, logits)``: the pre-activations of the ``feature_dim``-wide penultimate
    layer (the space FD, KID and precision/recall are measured in) and the class logits.
    H and W must be divisible by 4.
    """

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int],
        num_classes: int = 10,
        width: int = 32,
        feature_dim: int = 64,
        rngs: nnx.Rngs,
    ):
        height, width_px, channels = image_shape
        if height % 4 or width_px % 4:
            raise ValueError(f"FeatureCNN needs H and W divisible by 4, got {image_shape}")
        self.image_shape = tuple(image_shape)
        # One fixed convolution implementation (im2col + matmul, fast on CPU) so that the
        # features, and the weights trained from them, do not depend on the backend.
        self.conv1 = Conv3x3(channels, width, impl="matmul", rngs=rngs)
        self.conv2 = Conv3x3(width, 2 * width, impl="matmul", rngs=rngs)
        self.conv3 = Conv3x3(2 * width, 4 * width, impl="matmul", rngs=rngs)
        flat = (height // 4) * (width_px // 4) * 4 * width
        self.features = nnx.Linear(flat, feature_dim, rngs=rngs)
        self.head = nnx.Linear(feature_dim, num_classes, rngs=rngs)

    def __call__(self, x: Array) -> tuple[Array, Array]:
        """Penultimate features (B, feature_dim) and logits (B, num_classes)."""
        if x.shape[1:] != self.image_shape:
            raise ValueError(f"FeatureCNN expects images {self.image_shape}, got {x.shape[1:]}")
        # Centre the [0, 1] input so the first layer starts well conditioned.
        h = jax.nn.relu(self.conv1(2.0 * x - 1.0))
        h = jax.nn.relu(self.conv2(h))
        h = nnx.avg_pool(h, (2, 2), strides=(2, 2))
        h = jax.nn.relu(self.conv3(h))
        h = nnx.avg_pool(h, (2, 2), strides=(2, 2))
        # The features are taken before the ReLU: after it, units that are never active
        # on digits would be constant zeros and waste dimensions of the feature space.
        features = self.features(h.reshape(h.shape[0], -1))
        return features, self.head(jax.nn.relu(features))


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy of integer labels."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))
