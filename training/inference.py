"""Loading a trained run for sampling and evaluation, and drawing samples from it (also
class-conditionally, guided, or from an input image: inpainting, colorization, SDEdit).

Sampling uses training's mesh and shardings: a run is restored onto the mesh of
`config.sharding.mesh` with the train state's shardings (parameters replicated or
FSDP-sharded by `config.sharding.rules`), and each sampler call splits its batch over the
mesh's batch axes. A batch's noise is drawn from one key for the whole batch inside the
sharded program; with `jax_threefry_partitionable` (jax's default) random values do not
depend on how the program is partitioned, and the leading rows of a larger draw are those
of a smaller one, so a batch padded to a multiple of the device count (the extra rows
dropped) gives the samples of one device, whatever the device count.
"""

import math
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

import progress
from errors import UserError
from networks import layers
from training import checkpoint, images, sharding
from training.families import common, get_family
from training.families.request import SampleRequest
from training.run_config import SDE_PARAMETERS, differing
from training.sampling_report import SamplingReport
from training.state import TrainState

# What a guiding noise classifier must share with the diffusion model: the data it saw and
# the forward SDE that noised it (per SDE, the parameters it reads: SDE_PARAMETERS).
_CLASSIFIER_SHARED = ("data.dataset", "data.image_size", "data.num_channels", "data.centered",
                      "training.sde")


def make_mesh(config: ml_collections.ConfigDict, devices=None) -> Mesh:
    """The mesh of `config.sharding.mesh` over `devices` (default: every device of every
    process), as training builds it."""
    return sharding.make_mesh(config.sharding.mesh, devices)


def load_family(config: ml_collections.ConfigDict, workdir: str | Path,
                step: int | None = None):
    """The family of the run in `workdir`, built from the statistics its checkpoint (the
    newest, or the one at `step`) stores: the data and a latent model's VAE run are not
    read again (a workdir without checkpoints: computed, as training would). CheckpointError
    for a checkpoint of another config."""
    return get_family(config, checkpoint.saved_statistics(config, workdir, step))


def restore_latest(config: ml_collections.ConfigDict, workdir: str | Path,
                   step: int | None = None, *, devices=None, mesh: Mesh | None = None,
                   family=None):
    """Returns (family, state, step) from the newest checkpoint (or the one at `step`),
    placed as training places it: on `mesh` (default: `config.sharding.mesh` over
    `devices`, default all devices) with `config.sharding.rules`.

    A checkpoint restores onto any mesh, whatever the mesh that wrote it. Raises
    CheckpointError if the workdir has no checkpoint (at `step`) or one of another config,
    UserError if the config's mesh does not fit the devices. `family`: the config's, if
    the caller has built it already (`load_family`).
    """
    checkpoint.check_has_checkpoints(workdir)  # before building the family, which may be dear
    if mesh is None:
        mesh = make_mesh(config, devices)
    family = family or load_family(config, workdir, step)
    state, step = checkpoint.restore_run(config, workdir, family, step, mesh=mesh)
    return family, state, step


def mesh_of(tree: Any) -> Mesh | None:
    """The mesh the arrays of `tree` are placed on (that of the first NamedSharding among
    its leaves), or None if none is placed on a mesh."""
    for leaf in jax.tree.leaves(tree):
        placed = getattr(leaf, "sharding", None)
        if isinstance(placed, NamedSharding):
            return placed.mesh
    return None


def padded_batch(batch_size: int, mesh: Mesh) -> int:
    """`batch_size` rounded up to a multiple of the mesh's device count."""
    return -(-batch_size // mesh.size) * mesh.size


def to_host(x: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-process) global array as numpy, on every process."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _replicate(value, mesh: Mesh | None):
    """Host value -> replicated on `mesh` (each process puts the same value), so that the
    sampler's inputs never sit on one process's device only."""
    if value is None or mesh is None:
        return value
    return jax.device_put(np.asarray(value), sharding.replicated(mesh))


class BatchSampler:
    """One compiled sampler call of `batch_size` samples, split over the batch axes of
    `mesh` (padded to a multiple of its devices; the extra rows are drawn and dropped).

    `sampler(params, key, classifier_params=None, image=None, mask=None, guide_params=None)
    -> (x, nfe)`: `x` the padded batch as a global array sharded over the batch axes (its
    first `batch_size` rows are the samples, the same whatever the device count), `nfe`
    replicated. `params` (and the classifier's and guide's) must already be on `mesh`, as
    `restore_latest` places them; `key` is a raw uint32 key (`jax.random.PRNGKey`).
    `labels` ((batch_size,) int, or None), `request` (a SampleRequest; its image and mask
    are the defaults of the call's), `classifier` and `guide` (families) are fixed.
    """

    def __init__(self, family, batch_size: int, mesh: Mesh, request: SampleRequest, *,
                 labels: np.ndarray | None = None, classifier=None, guide=None):
        self.batch_size = batch_size
        self.padded_size = padded_batch(batch_size, mesh)
        self.mesh = mesh
        self.request = request
        sample = family.make_sampler(request.with_batch(self.padded_size),
                                     classifier=classifier, guide=guide)
        if labels is not None:
            # Valid classes for the padding rows, whose samples are dropped.
            labels = np.resize(np.asarray(labels, np.int32), self.padded_size)

        # The family's sampler is jitted within: this outer jit only fixes where its output
        # lives, and XLA propagates the batch sharding back through the whole sampler loop.
        def draw(params, key, classifier_params, guide_params, image, mask):
            return sample(params, key, labels, classifier_params, image, mask, guide_params)

        self._jitted = jax.jit(draw, out_shardings=(sharding.batch_sharding(mesh),
                                                    sharding.replicated(mesh)),
                               compiler_options=layers.compiler_options(family.data_shape))

    def _args(self, params, key, classifier_params, image, mask, guide_params) -> tuple:
        put = lambda value: _replicate(value, self.mesh)
        image = self.request.image if image is None else image
        mask = self.request.mask if mask is None else mask
        return params, put(key), classifier_params, guide_params, put(image), put(mask)

    def compile(self, params, key, classifier_params=None, image=None, mask=None,
                guide_params=None):
        """Compiles ahead of time for these arguments (to time compilation alone); returns
        a callable like this sampler that runs the compiled program."""
        compiled = self._jitted.lower(*self._args(params, key, classifier_params, image, mask,
                                                  guide_params)).compile()

        def run(params, key, classifier_params=None, image=None, mask=None, guide_params=None):
            return compiled(*self._args(params, key, classifier_params, image, mask,
                                        guide_params))

        return run

    def __call__(self, params, key, classifier_params=None, image=None, mask=None,
                 guide_params=None) -> tuple[jax.Array, jax.Array]:
        return self._jitted(*self._args(params, key, classifier_params, image, mask,
                                        guide_params))


def make_generator(family, request: SampleRequest, *, classifier: tuple | None = None,
                   guide: tuple | None = None):
    """`generate(state, seed=request.seed) -> (samples, nfe per batch)` for
    `request.num_samples` samples, `request.batch_size` per compiled sampler call.

    Samples are uint8 images (N, H, W, C), or float32 points (N, 2) for 2-D toy data.
    Batch `i` uses `fold_in(PRNGKey(seed), i)`, so a seed gives the same samples whatever
    the caller. `generate` raises UserError if the sampler produces non-finite values.

    A state placed on a mesh (`restore_latest`, the training loop) is sampled on it: each
    batch split over the mesh's batch axes (padded to a multiple of its devices, the extra
    samples dropped), giving the samples of one device for the same seed whatever the
    device count (fixed-step samplers exactly, up to float rounding; an adaptive ODE
    solver steps by the error of the whole batch, padding included, so its samples agree
    to its tolerance). Exception: a class-conditional batch's labels are constants of the
    compiled sampler, so when they differ between batches (0..K-1 cycling with a batch
    size not a multiple of K) each batch runs unsplit, on every device of the mesh.

    Class-conditional models, and any model guided by a `classifier` (a
    `(noise_classifier family, its state)` pair from `restore_latest`), sample the
    classes `generate.labels` (int32 (num,)): `request.labels` for all, or None for
    0, 1, ..., K-1 cycling; for other models `generate.labels` is None. `guide` (a
    `(family, state)` pair from `restore_guide`) autoguides the model; the classifier's
    and guide's states must be on the model's mesh (pass `mesh=` to `restore_classifier`
    / `restore_guide`). Bad requests raise UserError here, before any compile.
    """
    num, batch_size = request.num_samples, request.batch
    family = family.for_request(request)  # a text model: the one of the request's prompts
    classifier_family, classifier_state = classifier if classifier is not None else (None, None)
    if request.labels is not None and classifier is not None and \
            classifier_family.is_discriminator:
        raise UserError("a class label needs a label classifier; this one is a discriminator "
                        "(classifier.objective='discriminator'), which guides towards the "
                        "data without labels")
    options = {"classifier": classifier_family, "guide": None if guide is None else guide[0]}
    # Built here for its checks (bad requests fail before any compile); it also serves
    # states on no mesh and batches whose labels differ.
    sample = family.make_sampler(request, **options)
    num_batches = math.ceil(num / batch_size)
    label_classes = family.num_classes or (classifier_family.num_classes
                                           if classifier is not None else 0)
    labels = None
    if label_classes or request.labels is not None:
        # Checked (range, conditional model) by the sampler; the last batch is filled up.
        labels = common.sample_labels(request.labels, num_batches * batch_size, label_classes)
    batch_labels = [None if labels is None else labels[i * batch_size:(i + 1) * batch_size]
                    for i in range(num_batches)]
    same_labels = all(labels is None or np.array_equal(b, batch_labels[0])
                      for b in batch_labels)
    classifier_params = (None if classifier is None
                         else classifier_family.sample_params(classifier_state))
    # The guide samples with its EMA weights (or raw ones) as the model does.
    guide_params = (None if guide is None
                    else guide[0].sample_params(guide[1], use_ema=request.use_ema))
    image, mask = request.image, request.mask
    sharded: dict[Mesh, BatchSampler] = {}
    unsplit: list[Mesh] = []  # said once that batches run unsplit

    def generate(state: TrainState, seed: int | None = None) -> tuple[np.ndarray, int]:
        params = family.sample_params(state, use_ema=request.use_ema)
        mesh = mesh_of(params)
        if mesh is not None and same_labels and mesh not in sharded:
            sharded[mesh] = BatchSampler(family, batch_size, mesh, request,
                                         labels=batch_labels[0], **options)
        elif mesh is not None and not same_labels and mesh.size > 1 and not unsplit:
            unsplit.append(mesh)
            logging.info("The class labels differ between batches of %d: each batch runs "
                         "unsplit on the %d devices (a batch size that is a multiple of the "
                         "%d classes splits it)", batch_size, mesh.size, label_classes)
        key = jax.random.PRNGKey(request.seed if seed is None else seed)
        chunks, nfe = [], 0
        report = SamplingReport(num, num_batches, batch_size)
        for i in progress.bar(range(num_batches), desc="sampling"):
            batch_key = np.asarray(jax.random.fold_in(key, i))
            if mesh is not None and same_labels:
                x, nfe = sharded[mesh](params, batch_key, classifier_params, image, mask,
                                       guide_params)
            else:
                x, nfe = sample(params, _replicate(batch_key, mesh), batch_labels[i],
                                classifier_params, _replicate(image, mesh),
                                _replicate(mask, mesh), guide_params)
            x = to_host(x)[:batch_size]
            if not np.isfinite(x).all():
                raise UserError("the sampler produced non-finite values; nothing was written")
            chunks.append(images.to_uint8(x) if family.is_image_data else x.astype(np.float32))
            report.batch_done(i)
        return np.concatenate(chunks)[:num], int(nfe)

    generate.labels = None if labels is None else labels[:num].copy()
    return generate


def generate(family, state: TrainState, request: SampleRequest, **resources):
    """The request's samples from `state` and the score evaluations per batch (see
    make_generator, whose keyword arguments this takes)."""
    return make_generator(family, request, **resources)(state)


def restore_guide(model_config: ml_collections.ConfigDict,
                  guide_config: ml_collections.ConfigDict, workdir: str | Path,
                  step: int | None = None, *, mesh: Mesh | None = None):
    """(family, state, step) of the autoguide in `workdir` (at `step`, else its newest
    checkpoint): a weaker diffusion model of the model's data and SDE, checked against
    the model (UserError naming what differs). `mesh`: the model's, to sample beside it
    (default: the guide config's mesh over all devices)."""
    if guide_config.model.family != model_config.model.family:
        raise UserError(f"the autoguide config is of model.family="
                        f"{guide_config.model.family!r}, the model's "
                        f"{model_config.model.family!r}: they must match")
    if model_config.model.family not in ("diffusion", "latent_diffusion"):
        raise UserError(f"autoguidance guides diffusion models, not model.family="
                        f"{model_config.model.family!r}")
    keys = (_CLASSIFIER_SHARED + SDE_PARAMETERS.get(model_config.training.sde, ())
            + ("model.num_classes",))
    if model_config.model.family == "latent_diffusion":
        keys += ("latent.vae_config", "latent.vae_workdir")
    diffs = differing(keys, guide_config, model_config)
    if diffs:
        raise UserError("the autoguide was trained on other data or another SDE than the "
                        "model (guide vs model: " + "; ".join(diffs) + ")")
    return restore_latest(guide_config, workdir, step=step, mesh=mesh)


def restore_classifier(model_config: ml_collections.ConfigDict,
                       classifier_config: ml_collections.ConfigDict, workdir: str | Path,
                       *, mesh: Mesh | None = None):
    """(family, state, step) of the noise classifier in `workdir`, checked against the
    model it is to guide (UserError naming what differs). `mesh`: the model's, to sample
    beside it (default: the classifier config's mesh over all devices)."""
    if classifier_config.model.family != "noise_classifier":
        raise UserError(f"the classifier config is of model.family="
                        f"{classifier_config.model.family!r}, not 'noise_classifier'")
    keys = _CLASSIFIER_SHARED + SDE_PARAMETERS.get(model_config.training.sde, ())
    diffs = differing(keys, classifier_config, model_config)
    if diffs:
        raise UserError("the classifier was trained on other data or another SDE than the "
                        "model (classifier vs model: " + "; ".join(diffs) + ")")
    return restore_latest(classifier_config, workdir, mesh=mesh)

