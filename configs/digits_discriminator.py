"""A noise-conditional discriminator of the 8x8 digits against a model's own samples, for
discriminator guidance (Kim et al., 2022) of an unconditional digits VP model.

Draw the samples to discriminate first, then train on them and guide with the result:

    python sample.py --config configs/digits_vp.py --workdir runs/digits_vp \\
        --num_samples 5000 --sampler dpm_solver_pp --steps 20 --config.sampling.eta=1 \\
        --out runs/digits_vp/fakes.npz
    python train.py --config configs/digits_discriminator.py --workdir runs/digits_dg \\
        --config.classifier.fake_samples=runs/digits_vp/fakes.npz
    python sample.py --config configs/digits_vp.py --workdir runs/digits_vp \\
        --classifier_workdir runs/digits_dg --classifier_config configs/digits_discriminator.py \\
        --classifier_scale 1

The network and recipe are those of digits_noise_classifier (one logit instead of ten).
"""

from configs import digits_noise_classifier


def get_config():
    config = digits_noise_classifier.get_config()
    config.classifier.objective = "discriminator"
    return config
