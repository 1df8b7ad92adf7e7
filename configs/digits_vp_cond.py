"""Class-conditional VP SDE on the embedded 8x8 digits, trained for classifier-free
guidance: the digits_vp recipe with the 10 digit classes as labels, 10% of them replaced by
the null label during training (`sample.py --class_label K --guidance_scale W`)."""

from configs import digits_vp


def get_config():
    config = digits_vp.get_config()
    config.training.n_iters = 4000  # as measured (docs/results.md, docs/sampling.md)
    config.model.num_classes = 10
    config.training.class_dropout = 0.1
    return config
