"""Self-conditioning: k-means of the training images, the nearest-centre labels of a
batch, cluster draws by frequency (stratified or independent), and the GAN and diffusion
families that condition on them while staying unconditional."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data import kmeans
from errors import UserError
from tests.configs import tiny, tiny_families
from training.families import get_family
from training.families.request import SampleRequest as R


def _blobs(seed: int = 0):
    """Three well-separated blobs of 40, 25 and 10 points in 5-D, shuffled."""
    rng = np.random.default_rng(seed)
    means = np.array([[0.0] * 5, [10.0] * 5, [0.0, 10.0, 0.0, 10.0, 0.0]])
    truth = np.repeat([0, 1, 2], [40, 25, 10])
    points = means[truth] + 0.3 * rng.normal(size=(75, 5))
    order = rng.permutation(75)
    return points[order], truth[order], means


def test_kmeans_recovers_separated_blobs_deterministically():
    points, truth, means = _blobs()
    centres, assignment = kmeans.kmeans(points, 3, seed=1)
    # The same partition as the truth, whatever the cluster numbering.
    pairs = set(zip(truth.tolist(), assignment.tolist(), strict=True))
    assert len(pairs) == 3
    for j in range(3):
        members = points[assignment == j]
        np.testing.assert_allclose(centres[j], members.mean(axis=0), rtol=1e-5, atol=1e-5)
        assert np.min(np.abs(means - centres[j]).max(axis=1)) < 0.3
    again = kmeans.kmeans(points, 3, seed=1)
    np.testing.assert_array_equal(again[0], centres)
    np.testing.assert_array_equal(again[1], assignment)


def test_kmeans_fills_every_cluster_and_refuses_an_impossible_k():
    points = np.repeat(np.eye(2), [6, 1], axis=0)  # two distinct points, one of them 6 times
    centres, assignment = kmeans.kmeans(points, 3)
    assert np.all(np.bincount(assignment, minlength=3) >= 1)
    for j in range(3):
        np.testing.assert_allclose(centres[j], points[assignment == j].mean(axis=0))
    with pytest.raises(ValueError, match=r"1 <= k <= the number of points \(7\), got k=8"):
        kmeans.kmeans(points, 8)


def test_nearest_centre_and_cluster_draws():
    points, _, _ = _blobs()
    centres, assignment = kmeans.kmeans(points, 3)
    images = jnp.asarray(points, jnp.float32).reshape(75, 5, 1)
    np.testing.assert_array_equal(kmeans.nearest_centre(images, centres), assignment)
    frequencies = jnp.array([0.7, 0.0, 0.3])
    for how in kmeans.CLUSTER_DRAWS:
        draws = np.asarray(kmeans.draw_clusters(jax.random.PRNGKey(0), frequencies,
                                                        20_000, how=how))
        assert draws.dtype == np.int32 and not np.any(draws == 1)
        assert abs((draws == 0).mean() - 0.7) < 0.02
    with pytest.raises(ValueError, match="cluster draws are one of"):
        kmeans.draw_clusters(jax.random.PRNGKey(0), frequencies, 5, how="sorted")


_TEN = jnp.array([0.07, 0.13, 0.05, 0.10, 0.10, 0.05, 0.20, 0.10, 0.10, 0.10])


def test_stratified_draws_hold_every_cluster_in_proportion_in_any_window():
    expected = np.asarray(_TEN)
    for seed in range(5):
        draws = np.asarray(kmeans.draw_clusters(jax.random.PRNGKey(seed), _TEN, 5000,
                                                  how="stratified"))
        for n in (10, 360, 1000, 5000):
            for start in range(0, 5000 - n + 1, 97):
                counts = np.bincount(draws[start:start + n], minlength=10)
                assert np.abs(counts - n * expected).max() <= 3, (seed, n, start)
    # Independent draws miss by about sqrt(n p): far more than 3 at n = 5000.
    iid = np.asarray(kmeans.draw_clusters(jax.random.PRNGKey(0), _TEN, 5000, how="iid"))
    assert np.abs(np.bincount(iid, minlength=10) - 5000 * expected).max() > 3


def test_each_stratified_draw_has_the_cluster_frequencies_as_its_distribution():
    # The sample at position 3 over 4,000 keys: a random offset makes every position's
    # label an exact draw from the frequencies, so the model is sampled unchanged.
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    draws = np.asarray(jax.vmap(
        lambda key: kmeans.draw_clusters(key, _TEN, 4, how="stratified"))(keys))
    for position in range(4):
        share = np.bincount(draws[:, position], minlength=10) / len(keys)
        np.testing.assert_allclose(share, np.asarray(_TEN), atol=0.025)
    assert len({tuple(row) for row in draws[:20]}) > 1


def test_a_self_conditioned_gan_trains_on_clusters_and_samples_unconditionally():
    config = tiny_families.get_config("gan")
    config.model.self_condition_clusters = 5
    family = get_family(config)
    assert family.clusters.num == 5 and family.num_classes == 0
    assert not family.is_conditional
    np.testing.assert_allclose(float(jnp.sum(family.clusters.frequencies)), 1.0, rtol=1e-6)
    # The networks embed the 5 clusters: the label embedding has 5 rows.
    state = family.init_state(jax.random.PRNGKey(0))
    embeddings = [leaf.shape
                  for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)
                  if "embed" in jax.tree_util.keystr(path)]
    assert embeddings and all(shape[0] == 5 for shape in embeddings)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.uniform(-1, 1, (16, 8, 8, 1)), jnp.float32),
             "label": jnp.zeros((16,), jnp.int32)}
    new, metrics = jax.jit(family.train_step)(state, batch)
    assert int(new.step) == 1 and np.isfinite(metrics["d_loss"])
    sample = family.make_sampler(R(6))
    images, nfe = sample(family.sample_params(new), jax.random.PRNGKey(1))
    assert nfe == 1 and images.shape == (6, 8, 8, 1)
    with pytest.raises(UserError, match="class labels need a class-conditional model"):
        sample(family.sample_params(new), jax.random.PRNGKey(1), labels=3)


def test_self_conditioning_a_labelled_gan_or_negative_clusters_is_refused():
    config = tiny_families.get_config("gan_cond")
    config.model.self_condition_clusters = 5
    with pytest.raises(UserError, match=r"this one has labels \(model.num_classes=10\)"):
        get_family(config)
    config = tiny_families.get_config("gan")
    config.model.self_condition_clusters = -1
    with pytest.raises(UserError, match="self_condition_clusters must be >= 0, got -1"):
        get_family(config)
    config.model.self_condition_clusters = 5
    config.model.cluster_draws = "sorted"
    with pytest.raises(UserError, match=r"cluster_draws must be one of \('stratified', "
                                        r"'iid'\), got 'sorted'"):
        get_family(config)


def _clustered_diffusion(k: int = 5):
    config = tiny.get_config()
    config.model.self_condition_clusters = k
    return get_family(config)


def test_a_self_conditioned_diffusion_model_trains_and_samples_on_drawn_clusters():
    family = _clustered_diffusion()
    assert family.clusters.num == 5 and not family.is_conditional
    state = family.init_state(jax.random.PRNGKey(0))
    embeddings = [leaf.shape
                  for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)
                  if "embed" in jax.tree_util.keystr(path) and leaf.ndim == 2]
    assert embeddings and all(shape[0] == 5 for shape in embeddings)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.uniform(-1, 1, (16, 8, 8, 1)), jnp.float32),
             "label": jnp.zeros((16,), jnp.int32)}
    np.testing.assert_array_equal(family.training_labels(jax.random.PRNGKey(0), batch),
                                  family.clusters.of(batch["image"]))
    new, metrics = jax.jit(family.train_step)(state, batch)
    assert int(new.step) == 1 and np.isfinite(float(metrics["loss"]))
    assert np.isfinite(float(family.eval_step(new, batch, jax.random.PRNGKey(2))["eval_loss"]))
    sample = family.make_sampler(R(4, sampler="euler_maruyama", steps=2))
    images, nfe = sample(family.sample_params(new), jax.random.PRNGKey(1))
    assert images.shape == (4, 8, 8, 1) and nfe == 3
    assert np.all(np.isfinite(np.asarray(images)))
    with pytest.raises(UserError, match="class labels need a class-conditional model"):
        sample(family.sample_params(new), jax.random.PRNGKey(1), labels=3)


def test_a_self_conditioned_diffusion_model_refuses_what_needs_its_marginal_score():
    family = _clustered_diffusion()
    marginal = r"self-conditioned model \(model.self_condition_clusters=5\) has no"
    with pytest.raises(UserError, match=marginal + " likelihood here"):
        family.make_log_likelihood()
    with pytest.raises(UserError, match=marginal + " score for inpaint"):
        family.make_sampler(R(4, task="inpaint",
                              image=np.zeros((8, 8, 1)), mask=np.ones((8, 8, 1))))
    with pytest.raises(UserError, match=marginal + " unconditional score"):
        family.score_fn(family.init_params(jax.random.PRNGKey(0)))
    with pytest.raises(UserError, match="needs a class-conditional model"):
        family.make_sampler(R(4, guidance_scale=1.0))


def test_self_conditioning_is_refused_where_it_has_no_meaning():
    config = tiny_families.get_config("vae")
    config.model.self_condition_clusters = 5
    with pytest.raises(UserError, match=re.escape(
            "model.self_condition_clusters is a setting of model.family 'gan', "
            "'diffusion', 'latent_diffusion' only; this run is model.family='vae'")):
        get_family(config)
    config = tiny.get_config()
    config.data.dataset = "toy_gmm"
    config.model.name = "mlp"
    config.model.self_condition_clusters = 5
    with pytest.raises(UserError, match="clusters images; dataset 'toy_gmm' is not image data"):
        get_family(config)


def test_how_clusters_are_drawn_is_not_part_of_a_checkpoint_identity():
    # A run trained once is sampled either way: only the cluster count fixes the network.
    from training.checkpoint import config_identity

    config = tiny.get_config()
    config.model.self_condition_clusters = 5
    iid = config_identity(config)
    config.model.cluster_draws = "stratified"
    assert config_identity(config) == iid
    config.model.self_condition_clusters = 6
    assert config_identity(config) != iid


def test_the_clusters_are_computed_once_and_read_back_from_the_checkpoint(tmp_path,
                                                                          monkeypatch):
    from data import pipeline
    from training import inference, loop

    config = tiny.get_config()
    config.model.self_condition_clusters = 5
    config.training.n_iters = 1
    fresh = get_family(config)
    loop.run(config, tmp_path, devices=jax.devices()[:1])

    def no_data(*args, **kwargs):
        raise AssertionError("the training data were read again")

    # Sampling (and resuming) builds the family from the checkpoint's statistics alone.
    monkeypatch.setattr(pipeline, "read_split", no_data)
    restored = inference.load_family(config, tmp_path)
    np.testing.assert_array_equal(restored.clusters.centres, fresh.clusters.centres)
    np.testing.assert_array_equal(restored.clusters.frequencies, fresh.clusters.frequencies)
    family, _, step = inference.restore_latest(config, tmp_path)
    assert step == 1 and family.clusters.num == 5
    with pytest.raises(ValueError, match=r"statistics hold clusters of shape none; "
                                         r"model.self_condition_clusters=5"):
        type(fresh)(config, {})
