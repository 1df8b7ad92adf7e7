"""Neural style transfer (Gatys et al.) on any CNN's features: the losses, the
optimisation, colour preservation and image loading. A library: it imports only
``errors``, ``data`` (the photos), ``networks`` and itself.

    from networks.vgg import LAYER_NAMES, load_vgg19
    from style import GatysOptions, load_image, style_transfer

    vgg = load_vgg19("vgg19-dcbb9e9d.pth")  # torchvision's, or Keras' .h5
    content, _ = load_image("astronaut", 256)
    painting, _ = load_image("path/to/painting.jpg", 256)
    options = GatysOptions(scales=(128, 256), steps=200)
    result = style_transfer(content, painting, lambda x: vgg(x, options.layers),
                            LAYER_NAMES, options)
    result.image  # float32 (256, 256, 3) in [0, 1]; result.history: the losses
"""

from style.color import (
    luminance,
    luminance_only_transfer,
    match_luminance,
    recombine,
    rgb_to_yiq,
    yiq_to_rgb,
)
from style.gatys import GatysOptions, LossRecord, StyleResult, style_transfer
from style.images import available_names, load_image, resize_shorter, to_rgb
from style.losses import content_loss, gram, style_loss, total_variation

__all__ = [
    "GatysOptions",
    "LossRecord",
    "StyleResult",
    "available_names",
    "content_loss",
    "gram",
    "load_image",
    "luminance",
    "luminance_only_transfer",
    "match_luminance",
    "recombine",
    "resize_shorter",
    "rgb_to_yiq",
    "style_loss",
    "style_transfer",
    "to_rgb",
    "total_variation",
    "yiq_to_rgb",
]
