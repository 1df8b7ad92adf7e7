"""Which data a config names: `config.data` -> one split's records, decoder and description.

Every dataset ends up as a `Split` (random-access `records`, a `decode` to
{'image', 'label'}, and a `DatasetInfo`) that data/pipeline.py serves through grain, so the
transforms, shuffling, process sharding and checkpointable state are the same for all:
- `toy_<name>`: the 2-D distributions of data/toy.py, sampled once and held in memory;
- `synthetic`: random images of any `image_size` x `num_channels` generated per index
  (data/synthetic.py), no download, no preparation;
- `photos`: pairs of random crops (a content crop in `image`, a style crop in `style`) of
  the photographs scikit-image and scikit-learn ship (data/photos.py), generated per index;
- anything else: a TFDS dataset read with `tfds.data_source` (data/sources.py), `digits`
  included (prepared on first use).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from data import captions, photos, sources, synthetic, toy
from data.errors import DataError

TOY_PREFIX = "toy_"
DEFAULT_NUM_TOY_SAMPLES = 100_000
DEFAULT_NUM_TOY_TEST_SAMPLES = 10_000


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a configured dataset looks like once served.

    `shape` is one example's `image` shape after pre-processing, e.g. (8, 8, 1) or (2,);
    `num_classes` is 0 for unlabelled data (labels are then all zero); `extra_images`
    names the further images of `shape` each example carries besides `image` (`photos`:
    ('style',)), served the same way.
    """

    name: str
    shape: tuple[int, ...]
    num_classes: int
    num_train: int
    num_test: int
    extra_images: tuple[str, ...] = ()

    @property
    def is_image(self) -> bool:
        """True for (H, W, C) images, False for 2-D toy points."""
        return len(self.shape) == 3


@dataclasses.dataclass(frozen=True)
class Options:
    """The `config.data` settings the data code reads (missing keys take their defaults)."""

    dataset: str
    image_size: int | None
    num_channels: int | None
    centered: bool
    random_flip: bool
    uniform_dequantization: bool
    data_dir: str | None
    num_toy_samples: int
    num_toy_test_samples: int
    num_synthetic_samples: Any  # validated by the synthetic and photos openers
    captions: bool
    content_photos: Any = ""  # the photos opener's: comma-separated names, '' = all
    style_photos: Any = ""


def options(data_config: Mapping[str, Any]) -> Options:
    """Reads `config.data` (a ConfigDict or any mapping) into `Options`."""
    get = data_config.get
    return Options(
        dataset=str(data_config["dataset"]),
        image_size=get("image_size"),
        num_channels=get("num_channels"),
        centered=bool(get("centered", False)),
        random_flip=bool(get("random_flip", False)),
        uniform_dequantization=bool(get("uniform_dequantization", False)),
        data_dir=get("data_dir"),
        num_toy_samples=int(get("num_toy_samples", DEFAULT_NUM_TOY_SAMPLES)),
        num_toy_test_samples=int(get("num_toy_test_samples", DEFAULT_NUM_TOY_TEST_SAMPLES)),
        num_synthetic_samples=get("num_synthetic_samples", synthetic.DEFAULT_NUM_TRAIN),
        captions=bool(get("captions", False)),
        content_photos=get("content_photos", ""),
        style_photos=get("style_photos", ""),
    )


@dataclasses.dataclass(frozen=True)
class Split:
    """One split, ready for grain: `records[i]` -> `decode` -> {'image', 'label'}.

    For images the decoded `image` is uint8 (H, W, C) at the served size; for toy data it is
    already the float32 (2,) point.
    """

    info: DatasetInfo
    records: Sequence[Any]
    decode: Callable[[Any], dict[str, Any]]


def _toy_split(opts: Options, split: str, read: bool) -> Split:
    name = opts.dataset.removeprefix(TOY_PREFIX)
    if name not in toy.SAMPLERS:
        raise DataError(
            f"unknown toy dataset {opts.dataset!r}; known: "
            + ", ".join(TOY_PREFIX + key for key in toy.SAMPLERS)
        )
    sizes = {"train": opts.num_toy_samples, "test": opts.num_toy_test_samples}
    if split not in sizes:
        raise DataError(f"dataset {opts.dataset!r} has splits ['test', 'train'], not {split!r}")
    info = DatasetInfo(opts.dataset, (2,), 0, sizes["train"], sizes["test"])
    points = toy.load(name, split, sizes[split]) if read else np.zeros((0, 2), np.float32)
    return Split(info, points, lambda point: {"image": point, "label": 0})


def _image_split(opts: Options, split: str, read: bool) -> Split:
    src = sources.open_image_source(opts.dataset, split, opts.data_dir, read=read)
    height, width, channels = src.image_shape
    if opts.num_channels != channels:
        raise DataError(
            f"config.data.num_channels={opts.num_channels} but dataset {opts.dataset!r} "
            f"has {channels} channel(s)"
        )
    # Look up the bare name: 'celeb_a:2.1.0' is celeb_a too.
    crop = sources.CENTER_CROP.get(opts.dataset.split(":")[0].split("/")[0])
    size = opts.image_size
    if crop is None and (size, size) != (height, width):
        raise DataError(
            f"config.data.image_size={size} but dataset {opts.dataset!r} has "
            f"{height}x{width} images"
        )
    if crop is not None and (not isinstance(size, int) or size < 1):
        raise DataError(f"config.data.image_size must be a positive int, got {size!r}")
    label_key = src.label_key

    def decode(record: dict[str, Any]) -> dict[str, Any]:
        image = record["image"]
        if crop is not None:
            image = sources.center_crop_resize(image, crop, size)
        return {"image": image, "label": record[label_key] if label_key else 0}

    info = DatasetInfo(
        name=opts.dataset,
        shape=(size, size, channels),
        num_classes=src.num_classes,
        num_train=src.split_sizes.get("train", 0),
        num_test=src.split_sizes.get("test", 0),
    )
    return Split(info, src.records, decode)


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise DataError(f"config.data.{key} must be a positive int, got {value!r}")
    return int(value)


def _synthetic_split(opts: Options, split: str, read: bool) -> Split:
    size = _positive_int(opts.image_size, "image_size")
    channels = _positive_int(opts.num_channels, "num_channels")
    num_train = _positive_int(opts.num_synthetic_samples, "num_synthetic_samples")
    sizes = synthetic.split_sizes(num_train)
    if split not in sizes:
        raise DataError(f"dataset {opts.dataset!r} has splits {sorted(sizes)}, not {split!r}")
    shape = (size, size, channels)
    info = DatasetInfo(opts.dataset, shape, synthetic.NUM_CLASSES, sizes["train"], sizes["test"])
    records = synthetic.SyntheticRecords(split, sizes[split], shape) if read else ()
    # Records are already decoded (uint8 image, int label): nothing to do.
    return Split(info, records, lambda record: record)


def _photos_split(opts: Options, split: str, read: bool) -> Split:
    size = _positive_int(opts.image_size, "image_size")
    if opts.num_channels != 3:
        raise DataError(f"config.data.num_channels={opts.num_channels} but dataset "
                        f"{opts.dataset!r} has 3 channels (RGB)")
    num_train = _positive_int(opts.num_synthetic_samples, "num_synthetic_samples")
    content = photos.parse_names(opts.content_photos, "content_photos")
    style = photos.parse_names(opts.style_photos, "style_photos")
    sizes = photos.split_sizes(num_train)
    if split not in sizes:
        raise DataError(f"dataset {opts.dataset!r} has splits {sorted(sizes)}, not {split!r}")
    info = DatasetInfo(opts.dataset, (size, size, 3), 0, sizes["train"], sizes["test"],
                       extra_images=("style",))
    records = photos.PairRecords(split, sizes[split], size, content, style) if read else ()
    return Split(info, records, lambda record: record)


Opener = Callable[[Options, str, bool], Split]

# Datasets served without TFDS, by exact name; `toy_*` names go to the toy opener and every
# other name is taken to be a TFDS dataset.
_GENERATED: dict[str, Opener] = {synthetic.NAME: _synthetic_split, photos.NAME: _photos_split}


def _opener(name: str) -> Opener:
    if name.startswith(TOY_PREFIX):
        return _toy_split
    return _GENERATED.get(name, _image_split)


def open_split(
    data_config: Mapping[str, Any], split: str, *, read: bool = True
) -> tuple[Options, Split]:
    """Options and split; with `read=False` only the metadata (empty `records`).

    Raises DataError (a UserError) if the config does not fit the data (captions included),
    and DatasetNotPreparedError (a DataError) if a standard dataset is not prepared.
    """
    opts = options(data_config)
    if opts.captions:
        # Before opening, so that a dataset without captions is refused before any preparation.
        captions.check_dataset(opts.dataset)
    return opts, _opener(opts.dataset)(opts, split, read)
