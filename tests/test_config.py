"""RunConfig: defaults, YAML + flag precedence, and one-line errors naming field, value, allowed."""

from __future__ import annotations

import pytest

from gan.config import ConfigError, RunConfig, config_from_sources, load_yaml, make_config


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    cfg = make_config()
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert config_from_sources(path) == cfg


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr_g: 0.001\nbatch-size: 32\narch: mlp\n")
    cfg = config_from_sources(path, {"arch": "dcgan", "seed": None})
    assert (cfg.lr_g, cfg.batch_size, cfg.arch, cfg.seed) == (0.001, 32, "dcgan", RunConfig.seed)


def test_yaml_ints_are_accepted_for_float_fields():
    assert make_config({"ema": 0}).ema == 0.0


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"dataset": "imagenet"}, "dataset='imagenet' is invalid: must be one of mnist-5k"),
        ({"arch": "stylegan"}, "arch='stylegan' is invalid: must be one of mlp, dcgan"),
        ({"lr_g": 0.0}, "lr_g=0.0 is invalid: must be a finite number > 0"),
        ({"lr_d": -1e-4}, "lr_d=-0.0001 is invalid"),
        ({"label_smoothing": 0.5}, "label_smoothing=0.5 is invalid: must be a number in [0, 0.5)"),
        ({"label_smoothing": -0.1}, "label_smoothing=-0.1 is invalid"),
        ({"beta1": 1.0}, "beta1=1.0 is invalid: must be a number in [0, 1)"),
        ({"beta2": -0.5}, "beta2=-0.5 is invalid"),
        ({"batch_size": 0}, "batch_size=0 is invalid: must be a positive integer"),
        ({"epochs": True}, "epochs=True is invalid"),
        ({"loss": "wgan"}, "loss='wgan' is invalid: must be one of bce, hinge"),
        ({"image_size": 7}, "image_size=7 is invalid"),
        ({"learning_rate": 1}, "unknown config key 'learning_rate': allowed keys are dataset"),
    ],
)
def test_bad_values_fail_with_one_line_naming_field_value_and_allowed(values, expected):
    with pytest.raises(ConfigError) as err:
        make_config(values)
    assert str(err.value).startswith(expected)
    assert "\n" not in str(err.value)


def test_unreadable_or_malformed_config_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr_g: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(listy)
