"""Class-conditional DCGAN on the digits: the generator embeds the label, the
discriminator conditions by projection (Miyato & Koyama, 2018); sample.py --class_label."""

from configs import digits_gan


def get_config():
    config = digits_gan.get_config()
    config.model.num_classes = 10
    config.model.self_condition_clusters = 0  # the labels condition it, not clusters
    config.training.n_iters = 6000  # as measured (README); the unconditional run takes 5000
    return config
