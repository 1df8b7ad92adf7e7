"""The digits_vp recipe self-conditioned on 20 k-means clusters of the training pixels:
the score network embeds each image's cluster in place of a label, and sampling draws the
clusters by their training frequencies (i.i.d.; stratified with
--config.model.cluster_draws=stratified). No label is used anywhere, so the model
is unconditional; it has no likelihood here (its p(x) is a mixture over the clusters), so
evaluate.py leaves bits/dim out."""

from configs import digits_vp


def get_config():
    config = digits_vp.get_config()
    config.training.n_iters = 4000  # as measured (docs/results.md, docs/sampling.md)
    config.model.self_condition_clusters = 20
    config.eval.metrics = "fd,kid,pr,cs"
    return config
