"""Feed-forward arbitrary style transfer (AdaIN; Huang and Belongie, ICCV 2017) as a
training family: `model.family='style_adain'`, `model.name='adain'`, on the `photos`
dataset's (content, style) crop pairs (`data.dataset='photos'`).

A frozen pretrained encoder (`style.encoder`, a `style.feature_nets` network) reads both
crops; AdaIN gives the content features at `style.content_layer` the style features'
channel-wise mean and std; the decoder (`networks.adain.Decoder`, the encoder mirrored up
to that layer) is trained on `style.feedforward.training_losses`: the content loss at that
layer plus `style.style_weight` times the mean/std matching at `style.style_layers`. The
encoder's weights are the family's statistics: read once when the run starts (the pinned
style_cnn, or `style.vgg_weights`) and stored in every checkpoint, so resuming and
stylizing never read the weights file again. The decoder is the only trained network
(`params`; no EMA: `ema_params` is empty).

It draws no samples (capability STYLIZE, not SAMPLE): sample.py and evaluate.py refuse it
in one line. `make_stylizer()` is its jitted forward pass, `training.stylize.load(workdir)`
the restored run; at snapshot steps the loop writes a grid of fixed test pairs (rows:
content, style, result at `style.alpha`).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from data import pipeline
from errors import RequestError, UserError
from networks import adain as adain_net
from style import feature_nets, feedforward
from training import accumulate, optim
from training.families import base
from training.families.request import SampleRequest
from training.state import TrainState

NETWORKS = ("adain",)
# Test pairs in the snapshot grid (columns), at most.
MAX_SNAPSHOT_PAIRS = 8


def _refusal(family: str) -> str:
    return (f"model.family={family!r} is feed-forward style transfer: it draws no samples "
            "and has no likelihood; stylize content images with training.stylize.load(WORKDIR)")


def _encoder_network(cfg: ml_collections.ConfigDict) -> feature_nets.FeatureNetwork:
    """`style.encoder`'s feature network, with its weights file when it needs one."""
    if cfg.encoder not in feature_nets.NETWORKS:
        raise UserError(f"style.encoder={cfg.encoder!r} is not one of "
                        f"{sorted(feature_nets.NETWORKS)}")
    network = feature_nets.NETWORKS[cfg.encoder]
    if network.needs_weights and not cfg.vgg_weights:
        raise UserError(f"style.encoder={cfg.encoder!r} needs its weights: style.vgg_weights="
                        f"FILE ({feature_nets.VGG19_FILES}); nothing is downloaded")
    return network


class StyleAdaINFamily(base.FamilyBase):
    """`model.family='style_adain'`: `stylize` / `make_stylizer` (capability STYLIZE),
    `losses`, `encode` and `decode`; `encoder_state` holds the frozen encoder's weights
    (the statistics) and `plan` the decoder's steps."""

    capabilities = frozenset({base.STYLIZE})

    def __init__(self, config: ml_collections.ConfigDict, statistics: dict | None = None):
        """`statistics`: what `compute_statistics(config)` returned (the encoder's weights)."""
        statistics = dict(statistics or {})
        if "encoder" not in statistics:
            raise ValueError("a style_adain model is built from its statistics; 'encoder' is "
                             "missing (StyleAdaINFamily.compute_statistics reads it)")
        self.config = config
        self.statistics = statistics
        cfg = config.style
        if config.model.name not in NETWORKS:
            raise UserError(f"model.family='style_adain' takes model.name in {NETWORKS}, got "
                            f"{config.model.name!r}")
        if config.model.num_classes:
            raise UserError("model.family='style_adain' has no classes: set model.num_classes=0")
        if config.model.dtype != "float32":
            raise UserError(f"model.family='style_adain' computes in float32; got model.dtype="
                            f"{config.model.dtype!r}")
        if config.eval.metrics_during_training:
            raise UserError("a style transfer model draws no samples to measure: set "
                            "eval.metrics_during_training=''")
        info = pipeline.get_info(config.data)
        if "style" not in info.extra_images:
            raise UserError(f"model.family='style_adain' trains on (content, style) pairs: "
                            f"data.dataset='photos', not {config.data.dataset!r}")
        self.data_shape = tuple(info.shape)
        if not cfg.style_weight >= 0:
            raise UserError(f"config.style.style_weight must be >= 0, got {cfg.style_weight}")
        if not cfg.decoder_width > 0:
            raise UserError(f"config.style.decoder_width must be > 0, got {cfg.decoder_width}")
        if not 0.0 <= cfg.alpha <= 1.0:
            raise UserError(f"config.style.alpha must lie in [0, 1], got {cfg.alpha}")
        self.encoder_network = _encoder_network(cfg)
        self.layer_names = self.encoder_network.layer_names
        self.content_layer = str(cfg.content_layer)
        self.style_layers = tuple(cfg.style_layers)
        feedforward.check_layers(self.layer_names, self.content_layer, self.style_layers)
        encoder = adain_net.with_weights(self.encoder_network.abstract(cfg.vgg_weights or None),
                                         statistics["encoder"])
        self._encoder_graphdef, self.encoder_state = nnx.split(encoder)
        self.plan = adain_net.widen(
            adain_net.mirror_plan(encoder, self.layer_names, self.content_layer),
            float(cfg.decoder_width))
        self.multiple = adain_net.downsampling(self.plan)
        if self.data_shape[0] % self.multiple:
            raise UserError(f"data.image_size={self.data_shape[0]} must be a multiple of "
                            f"{self.multiple} (the encoder's downsampling up to "
                            f"{self.content_layer})")
        self.tx, self.lr_schedule = optim.make_optimizer(config.optim, config.training.n_iters)
        self.accum_steps = config.training.grad_accum_steps
        decoder = nnx.eval_shape(lambda: self._build(nnx.Rngs(0)))
        self._graphdef, _, self._rest = nnx.split(decoder, nnx.Param, ...)

    @classmethod
    def compute_statistics(cls, config: ml_collections.ConfigDict) -> dict:
        """The frozen encoder's weights (up to the deepest layer used): the pinned style_cnn
        or `style.vgg_weights`, read once."""
        cfg = config.style
        network = _encoder_network(cfg)
        names = network.layer_names
        deepest = feedforward.check_layers(names, cfg.content_layer, tuple(cfg.style_layers))
        encoder = network.load(cfg.vgg_weights or None)
        state = nnx.to_pure_dict(nnx.state(encoder))
        return {"encoder": adain_net.used_weights(state, names, deepest)}

    # -- the networks, as pure functions -----------------------------------------------

    def _build(self, rngs: nnx.Rngs) -> adain_net.Decoder:
        return adain_net.Decoder(self.plan, reflect=bool(self.config.style.reflect_padding),
                                 impl=self.config.model.conv_impl, rngs=rngs)

    def init_params(self, key: jax.Array):
        return nnx.split(self._build(nnx.Rngs(key)), nnx.Param, ...)[1]

    def encode_fn(self, encoder_state=None) -> feedforward.Encode:
        """`encode(images in [0, 1], layers) -> {layer: features}` of the frozen encoder
        (`encoder_state`: its weights, default the family's)."""
        state = self.encoder_state if encoder_state is None else encoder_state
        encoder = nnx.merge(self._encoder_graphdef, state)
        return lambda images, layers: encoder(images, layers=list(layers))

    def decode_fn(self, params) -> feedforward.Decode:
        """`decode(features) -> images` of the decoder with `params`."""
        return nnx.merge(self._graphdef, params, self._rest)

    def _unit(self, x: jax.Array) -> jax.Array:
        """Data-space images to [0, 1] (the encoder's input)."""
        return (x + 1.0) / 2.0 if self.config.data.centered else x

    def losses(self, params, content: jax.Array, style: jax.Array) -> dict[str, jax.Array]:
        """{'loss', 'content_loss', 'style_loss'} of (content, style) pairs in [0, 1]."""
        return feedforward.training_losses(
            self.encode_fn(), self.decode_fn(params), content, style,
            content_layer=self.content_layer, style_layers=self.style_layers,
            style_weight=float(self.config.style.style_weight))

    # -- training -----------------------------------------------------------------------

    def init_state(self, key: jax.Array) -> TrainState:
        params_key, rng = jax.random.split(key)
        params = self.init_params(params_key)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params), ema_params={}, rng=rng)

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        def objective(params, micro, index):
            terms = self.losses(params, micro["content"], micro["style"])
            return terms["loss"], terms

        inputs = {"content": self._unit(batch["image"]), "style": self._unit(batch["style"])}
        (loss, terms), grads = accumulate.value_and_grad(objective, state.params, inputs,
                                                         self.accum_steps)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(step=state.step + 1,
                                  params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state)
        return new_state, {"loss": loss, "content_loss": terms["content_loss"],
                           "style_loss": terms["style_loss"],
                           "grad_norm": optax.tree.norm(grads),
                           "lr": self.lr_schedule(state.step)}

    def eval_step(self, state: TrainState, batch: dict, key: jax.Array) -> dict:
        """The losses on held-out (content, style) pairs."""
        terms = self.losses(state.params, self._unit(batch["image"]), self._unit(batch["style"]))
        return {f"eval_{name}": value for name, value in terms.items()}

    # -- stylizing ------------------------------------------------------------------------

    def sample_params(self, state: TrainState, use_ema: bool = True):
        """What `make_stylizer`'s function takes: the decoder's parameters and the
        encoder's weights (no EMA: `use_ema` changes nothing)."""
        return {"decoder": state.params, "encoder": self.encoder_state}

    def make_stylizer(self):
        """A jitted `stylize(params, content, style, alpha) -> images`: `params` from
        `sample_params(state)`; content and style RGB in [0, 1], (H, W, 3) or (N, H, W, 3),
        any sizes (one style for all, or one per content image); `alpha` in [0, 1] (a
        traced scalar or (N,): no recompilation per value). Float32 images of the
        content's shape in [0, 1]. It compiles once per shape."""

        @jax.jit
        def stylize(params, content, style, alpha):
            return feedforward.stylize(self.encode_fn(params["encoder"]),
                                       self.decode_fn(params["decoder"]), content, style,
                                       alpha, layer=self.content_layer, multiple=self.multiple)

        return stylize

    @functools.cached_property
    def _stylize(self):
        return self.make_stylizer()

    @functools.cached_property
    def snapshot_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(content, style) float32 (n, H, W, 3) in [0, 1]: the first test pairs, at most
        `MAX_SNAPSHOT_PAIRS` (and `training.num_snapshot_samples`)."""
        n = max(1, min(MAX_SNAPSHOT_PAIRS, int(self.config.training.num_snapshot_samples)))
        pairs = pipeline.read_split(self.config.data, "test", limit=n)
        return (pairs["image"].astype(np.float32) / 255.0,
                pairs["style"].astype(np.float32) / 255.0)

    def snapshot_rows(self, params) -> np.ndarray:
        """(3, n, H, W, 3) float32 in [0, 1]: the snapshot pairs' content, style and result
        (at `style.alpha`), a row each."""
        content, style = self.snapshot_pairs
        out = self._stylize(params, content, style, jnp.float32(self.config.style.alpha))
        return np.stack([content, style, np.asarray(jax.device_get(out))])

    # -- what it cannot do ------------------------------------------------------------------

    def sampler_name(self, request: SampleRequest) -> str:
        return "none (feed-forward style transfer)"

    def refusal(self, missing: list[tuple[str, str]]) -> str:
        return _refusal(self.config.model.family)

    def make_sampler(self, request: SampleRequest, *, classifier=None, guide=None):
        raise RequestError(_refusal(self.config.model.family))
