"""Seconds-fast configs for controllable generation: `tests/configs/tiny_guided.py:cond` is
the tiny digits VP model made class-conditional (half the labels dropped, so the null label
is well trained for its size), `:plain` the same network unconditional, `:classifier` a
tiny noise classifier of the same digits and SDE (for classifier guidance), `:discriminator`
the same network as a real-vs-generated discriminator (the test sets
classifier.fake_samples). All are smaller than tiny's network."""

from tests.configs import tiny


def get_config(kind: str = "cond"):
    config = tiny.get_config("vpsde")
    config.training.snapshot_sampling = False  # the tests sample through sample.py
    # One resolution level, no attention, no dropout: the tests are about the wiring, and
    # this network compiles in a fraction of tiny's time.
    config.model.ch_mult = (1,)
    config.model.attn_resolutions = ()
    config.model.dropout = 0.0
    if kind == "cond":
        config.model.num_classes = 10
        config.training.class_dropout = 0.5
    elif kind == "plain":
        pass
    elif kind in ("classifier", "discriminator"):
        config.model.family = "noise_classifier"
        config.model.name = "noise_cnn"
        config.classifier.objective = "labels" if kind == "classifier" else "discriminator"
    else:
        raise ValueError(f"unknown tiny_guided config {kind!r}; known: cond, plain, "
                         "classifier, discriminator")
    return config
