"""Feed-forward arbitrary style transfer (AdaIN, Huang and Belongie 2017) on the photos that
ship with scikit-image and scikit-learn: the frozen style_cnn, AdaIN at its relu3_1, the
mirrored decoder trained on 64x64 crops of (content, style) photo pairs, batch 8, 2,000
steps (about two minutes on 2 CPU cores). The decoder is fully convolutional:
`training.stylize.load(workdir)` stylizes images of any size.

relu3_1 is style_cnn's counterpart of VGG-19's relu4_1 (the paper's layer): 64 channels at
a quarter of the resolution hold 4/3 numbers per input number, as VGG's 512 at an eighth
hold 8/3, where style_cnn's relu4_1 (128 at an eighth: 2/3) loses what a decoder needs and
trained far slower. The style loss reads the layers up to it, as the paper's does, with
style_weight 3 (the paper's 10 is for VGG's activations). For the paper's setting:
style.encoder='vgg19', style.vgg_weights=FILE, style.content_layer='relu4_1',
style.style_layers=(relu1_1, ..., relu4_1), style.style_weight=10, and at scale
data.image_size=256 with a larger batch and n_iters."""

from configs.default import get_default_config


def get_config():
    config = get_default_config()
    config.model.family = "style_adain"
    config.model.name = "adain"
    config.style.content_layer = "relu3_1"
    config.style.style_layers = ("relu1_1", "relu2_1", "relu3_1")
    config.style.style_weight = 3.0
    data = config.data
    data.dataset = "photos"
    data.image_size = 64
    data.num_channels = 3
    data.centered = False  # the encoder reads RGB in [0, 1]
    data.random_flip = True
    data.content_photos = "astronaut,camera,chelsea,clock,coffee,coins,moon,rocket,china,flower"
    data.style_photos = ("brick,colorwheel,grass,gravel,hubble_deep_field,immunohistochemistry,"
                         "logo,page,retina")
    training = config.training
    training.batch_size = 8
    training.n_iters = 2000
    training.eval_freq = 250
    training.snapshot_freq = 500
    training.num_snapshot_samples = 8
    config.optim.lr = 3e-3
    return config
