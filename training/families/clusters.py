"""Self-conditioning on k-means clusters of the training images, for the families that
take it (GAN, diffusion and latent diffusion; `model.self_condition_clusters = K > 0`).

The networks are conditioned on the cluster of each training image in place of a human
label (Liu et al., 2020), and sampling draws the cluster from the training split's cluster
frequencies (`model.cluster_draws`: i.i.d. by default, or stratified; `data/kmeans.py`). No
label is asked of the user: the model is unconditional, p(x) = sum_k pi_k p(x | k) with
pi_k the cluster frequencies. (Not the self-conditioning of Chen et al. (2022), which
feeds a diffusion model its own previous estimate of x_0.)
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from data import kmeans, pipeline
from errors import UserError


@dataclasses.dataclass(frozen=True)
class Clusters:
    """The k-means clusters of the training data (what the model models: images in data
    space, or a latent model's scaled latents), and how samples draw them."""

    centres: jax.Array  # (K, D)
    frequencies: jax.Array  # (K,), summing to 1
    draws: str  # one of kmeans.CLUSTER_DRAWS

    @property
    def num(self) -> int:
        return int(self.frequencies.shape[0])

    def of(self, images: jax.Array) -> jax.Array:
        """(B,) int32 cluster of each of `images` (B, ...), by its nearest centre."""
        return kmeans.nearest_centre(images, self.centres)

    def draw(self, key: jax.Array, num: int) -> jax.Array:
        """(num,) int32 clusters for `num` samples, each distributed as the frequencies."""
        return kmeans.draw_clusters(key, self.frequencies, num, how=self.draws)


def count(config: ml_collections.ConfigDict, *, num_classes: int) -> int:
    """K of `model.self_condition_clusters` (0: none), checked without reading any data.
    UserError for a negative count, an unknown `model.cluster_draws`, a model that already
    has labels, or data that are not images."""
    k = int(config.model.get("self_condition_clusters", 0))
    if k < 0:
        raise UserError(f"config.model.self_condition_clusters must be >= 0, got {k}")
    draws = str(config.model.get("cluster_draws", "iid"))
    if draws not in kmeans.CLUSTER_DRAWS:
        raise UserError(f"config.model.cluster_draws must be one of "
                        f"{kmeans.CLUSTER_DRAWS}, got {draws!r}")
    if k == 0:
        return 0
    if num_classes:
        raise UserError("config.model.self_condition_clusters conditions an unconditional "
                        f"model on clusters; this one has labels (model.num_classes="
                        f"{num_classes}): set one of them to 0")
    if len(pipeline.get_info(config.data).shape) != 3:
        raise UserError("config.model.self_condition_clusters clusters images; dataset "
                        f"{config.data.dataset!r} is not image data")
    return k


def compute(config: ml_collections.ConfigDict, *, num_classes: int,
            training_data: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The statistics a self-conditioned run stores in its checkpoints (empty for K = 0):
    `centres` (K, ...) and `frequencies` (K,) of k-means on `training_data` (N, ...), by
    default the training split's pixels in data space ([-1, 1] if `data.centered`);
    deterministic. UserErrors of `count`, and for more clusters than images."""
    k = count(config, num_classes=num_classes)
    if k == 0:
        return {}
    if training_data is None:
        images = pipeline.read_split(config.data, "train")["image"].astype(np.float32) / 255.0
        training_data = 2.0 * images - 1.0 if config.data.centered else images
    images = np.asarray(training_data, np.float32)
    if k > len(images):
        raise UserError(f"config.model.self_condition_clusters={k} exceeds the "
                        f"{len(images)} training images")
    centres, assignment = kmeans.kmeans(images, k, seed=0)
    sizes = np.bincount(assignment, minlength=k)
    logging.info("self-conditioning on %d k-means clusters of %d training images (sizes %s)",
                 k, len(images), sizes.tolist())
    return {"centres": np.asarray(centres, np.float32),
            "frequencies": np.asarray(sizes / len(assignment), np.float32)}


def from_statistics(config: ml_collections.ConfigDict, statistics: dict, *,
                    num_classes: int) -> Clusters | None:
    """The run's clusters from what `compute` returned (None for K = 0), drawn as
    `model.cluster_draws` says (a sampling choice, free to change after training).
    ValueError if `statistics` lack the K clusters the config asks for."""
    k = count(config, num_classes=num_classes)
    if k == 0:
        return None
    if not statistics or np.shape(statistics.get("frequencies")) != (k,):
        found = np.shape(statistics.get("frequencies", ())) if statistics else "none"
        raise ValueError(f"the run's statistics hold clusters of shape {found}; "
                         f"model.self_condition_clusters={k}")
    return Clusters(jnp.asarray(statistics["centres"]), jnp.asarray(statistics["frequencies"]),
                    str(config.model.get("cluster_draws", "iid")))
