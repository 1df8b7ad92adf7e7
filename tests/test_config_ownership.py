"""Who owns a config key is written once (configs/sections.py): every default key is the
base's or one group's, every family names its groups, and a family refuses a changed key
of a group it does not take.

The composed default is compared key by key (value and type) with tests/default_config.json,
a frozen copy of the default from before the groups existed. A deliberate change of a
default updates it: `python -m tests.test_config_ownership --write`.
"""

import json
import sys
from pathlib import Path

import ml_collections
import pytest

from configs import sections
from configs.default import base_config, get_default_config
from errors import UserError

FIXTURE = Path(__file__).with_name("default_config.json")


def _flat(node: ml_collections.ConfigDict, prefix: str = "") -> dict:
    """dotted key -> [value, type name], JSON-normalised (tuples as lists)."""
    out = {}
    for key in node._fields:  # declaration order (items() sorts)
        value = node[key]
        if isinstance(value, ml_collections.ConfigDict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = [value, node.get_type(key).__name__]
    return json.loads(json.dumps(out))


def test_the_composed_default_is_the_frozen_one_key_by_key():
    frozen, composed = json.loads(FIXTURE.read_text()), _flat(get_default_config())
    assert sorted(set(frozen) - set(composed)) == [], "keys lost"
    assert sorted(set(composed) - set(frozen)) == [], "keys added (update the fixture)"
    assert {k: v for k, v in composed.items() if frozen[k] != v} == {}


def test_every_default_key_belongs_to_exactly_one_place():
    places = {"base": set(_flat(base_config()))}
    places.update({name: set(defaults()) for name, defaults in sections.GROUPS.items()})
    everywhere = set(_flat(get_default_config()))
    for key in everywhere:
        owners = [name for name, keys in places.items() if key in keys]
        assert len(owners) == 1, (key, owners)
    assert set().union(*places.values()) == everywhere


def test_a_key_written_twice_is_refused_when_composing():
    base = base_config()
    base.model.beta_min = 0.2
    with pytest.raises(ValueError, match=r"config.model.beta_min of group 'score' is "
                                         r"already set"):
        sections.compose(base)


def test_group_defaults_are_fresh_on_every_call():
    first, second = get_default_config(), get_default_config()
    first.sampling.eta = 0.5
    assert second.sampling.eta is None and get_default_config().sampling.eta is None


def test_every_registered_family_names_its_groups_and_networks():
    from training.families import FAMILIES

    assert set(sections.FAMILY_GROUPS) == set(FAMILIES)
    for family, groups in sections.FAMILY_GROUPS.items():
        assert groups and set(groups) <= set(sections.GROUPS), family
    taken = {group for groups in sections.FAMILY_GROUPS.values() for group in groups}
    assert taken == set(sections.GROUPS), "a group no family takes"
    assert set(sections.NETWORK_FAMILIES.values()) <= set(FAMILIES)


def test_a_group_holding_a_whole_section_owns_keys_the_default_lacks():
    default_keys = _flat(get_default_config())
    assert sections.group_of("gan.new_penalty", default_keys) == "gan"
    assert sections.group_of("sampling.new_option", default_keys) == "score"
    assert sections.group_of("model.new_width", default_keys) is None  # base and groups
    assert sections.group_of("model.nf", default_keys) is None
    assert sections.group_of("model.ema_rate", default_keys) == "unet"


def _changed(config: ml_collections.ConfigDict, key: str) -> ml_collections.ConfigDict:
    """`config` with `key` set to a value other than its default."""
    *path, leaf = key.split(".")
    node = config
    for part in path:
        node = node[part]
    value, kind = node[leaf], node.get_type(leaf)
    if kind is bool:
        new = not value
    elif kind in (int, float):
        new = kind((value or 0) + 3)
    elif kind is str:
        new = "another"
    elif kind is tuple:
        new = (*value, value[-1]) if value else (4,)
    else:
        raise AssertionError(f"no changed value for {key} of type {kind}")
    node[leaf] = new
    return config


def _family_config(family: str) -> ml_collections.ConfigDict:
    config = get_default_config()
    config.model.family = family
    config.model.name = {"gan": "dcgan", "vae": "conv_vae",
                         "noise_classifier": "noise_cnn"}.get(family, "ddpmpp")
    return config


@pytest.mark.parametrize("family", sorted(sections.FAMILY_GROUPS))
def test_a_family_refuses_every_group_it_does_not_take_and_accepts_its_own(family):
    from training.families import check_family_settings

    for group, defaults in sections.GROUPS.items():
        families = sections.families_of(group)
        for key in defaults():
            config = _changed(_family_config(family), key)
            if group in sections.FAMILY_GROUPS[family]:
                check_family_settings(config)
                continue
            takers = (f"model.family={families[0]!r}" if len(families) == 1 else
                      f"model.family {', '.join(map(repr, families))} only")
            with pytest.raises(UserError) as refusal:
                check_family_settings(config)
            assert str(refusal.value) == (f"config.{key} is a setting of {takers}; this run "
                                          f"is model.family={family!r}")


def test_the_refusals_read_as_they_did():
    from training.families import check_family_settings

    cases = {
        ("gan", "training.sde"): "config.training.sde is a setting of model.family "
        "'diffusion', 'latent_diffusion', 'noise_classifier', 'text_diffusion', 'consistency', "
        "'progressive_distillation', 'reflow' only; this run is model.family='gan'",
        ("vae", "model.self_condition_clusters"): "config.model.self_condition_clusters is "
        "a setting of model.family 'gan', 'diffusion', 'latent_diffusion' only; this run is "
        "model.family='vae'",
        ("gan", "model.ema_rate"): "config.model.ema_rate is a setting of model.family "
        "'diffusion', 'latent_diffusion', 'noise_classifier', 'text_diffusion', 'vae', "
        "'consistency', 'progressive_distillation', 'reflow' only; this run is "
        "model.family='gan'",
        ("diffusion", "gan.r1_gamma"): "config.gan.r1_gamma is a setting of "
        "model.family='gan'; this run is model.family='diffusion'",
        ("latent_diffusion", "model.latent_channels"): "config.model.latent_channels is a "
        "setting of model.family='vae'; this run is model.family='latent_diffusion'",
    }
    for (family, key), message in cases.items():
        with pytest.raises(UserError) as refusal:
            check_family_settings(_changed(_family_config(family), key))
        assert str(refusal.value) == message


def _write_fixture() -> None:
    flat = _flat(get_default_config())
    FIXTURE.write_text("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}"
                                          for k, v in flat.items()) + "\n}\n")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    _write_fixture()
