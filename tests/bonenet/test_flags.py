"""Config fields as command-line flags (`bonenet.flags`)."""

import argparse

import pytest

from bonenet.configs import EvaluateConfig, TrainConfig
from bonenet.flags import add_config_flags, all_or, config_values, in_range, part_type, recipe_type


def _parser(config_class):
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_config_flags(parser, config_class)
    return parser


def test_each_field_is_one_flag_with_its_default_and_a_true_boolean_is_a_no_flag():
    args = _parser(EvaluateConfig).parse_args([])
    assert config_values(args, EvaluateConfig) == {"split": "valid", "bootstrap": 1000, "seed": 0, "gallery": 3,
                                                  "tta": "none", "explain": "locator", "plots": True}
    assert _parser(EvaluateConfig).parse_args(["--no-plots", "--bootstrap", "0"]).plots is False
    assert EvaluateConfig(**config_values(_parser(EvaluateConfig).parse_args(["--no-plots"]), EvaluateConfig)).plots is False


def test_values_are_checked_while_parsing():
    with pytest.raises(argparse.ArgumentTypeError, match="out of range: must be at least 0"):
        in_range(int, EvaluateConfig.__dataclass_fields__["bootstrap"].metadata["range"])("-1")
    with pytest.raises(argparse.ArgumentTypeError, match="'x' is not an integer"):
        in_range(int, EvaluateConfig.__dataclass_fields__["bootstrap"].metadata["range"])("x")
    assert all_or(int, 234)("ALL") == 234 and all_or(int, 234)("5") == 5
    assert _parser(TrainConfig).parse_args(["--trainable-layers", "all"]).trainable_layers == 234
    assert part_type("wrist") == "XR_WRIST"
    with pytest.raises(argparse.ArgumentTypeError):
        part_type("knee")
    assert recipe_type("equalize") == "equalize"
    with pytest.raises(argparse.ArgumentTypeError, match="unknown recipe"):
        recipe_type("sharpest")
