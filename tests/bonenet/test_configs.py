"""Configuration (`bonenet.configs`): every default, help line, range and choice written once."""

import dataclasses

import pytest

import run_pipeline
from bonenet import configs
from bonenet.configs import (
    MAX_TRAINABLE_LAYERS,
    DemoPlan,
    EvaluateConfig,
    PredictConfig,
    PretrainConfig,
    Range,
    ServeConfig,
    TrainConfig,
    check_config,
)

COMMAND = {TrainConfig: "train-all", PretrainConfig: "pretrain-backbone", DemoPlan: "demo", EvaluateConfig: "evaluate",
           PredictConfig: "predict", ServeConfig: "serve", configs.SyntheticConfig: "make-synthetic",
           configs.PreprocessConfig: "preprocess"}
ALL = list(COMMAND)


@pytest.mark.parametrize("config_class", ALL, ids=lambda c: c.__name__)
def test_every_field_has_one_line_of_help_and_its_default_passes_its_own_checks(config_class):
    for field in dataclasses.fields(config_class):
        assert field.metadata["help"] and "\n" not in field.metadata["help"], field.name
    check_config(config_class())


@pytest.mark.parametrize("config_class", ALL, ids=lambda c: c.__name__)
def test_the_command_line_takes_its_defaults_and_help_from_the_fields(config_class):
    parser = run_pipeline.build_parser()
    command = parser._subparsers._group_actions[0].choices[COMMAND[config_class]]
    actions = {a.dest: a for a in command._actions}
    for field in dataclasses.fields(config_class):
        action = actions[field.name]
        if config_class is not DemoPlan:  # the demo's flags default to None: only what is typed overrides its plan
            assert action.default == field.default, field.name
        assert field.metadata["help"] in action.help or field.name == "trainable_layers", field.name


def test_values_outside_a_range_or_the_choices_are_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"epochs must be at least 1, got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match=r"strategy must be one of auto, default, mirrored, multiworker"):
        TrainConfig(strategy="tpu")
    with pytest.raises(ValueError, match=r"port must be within \[1, 65535\], got 0"):
        ServeConfig(port=0)
    assert {f.name: f.metadata["range"] for f in dataclasses.fields(TrainConfig)}["trainable_layers"] == Range(0, MAX_TRAINABLE_LAYERS)


def test_deep_fine_tuning_trains_in_full_mode():
    assert TrainConfig(trainable_layers=MAX_TRAINABLE_LAYERS).mode == "full"
    assert TrainConfig().mode == "cached" and not TrainConfig().deep


@pytest.mark.parametrize("accepted, inside, outside", [(Range(1), [1, 5.5], [0.99]),
                                                       (Range(0, 1, True, True), [0.5], [0, 1]),
                                                       (Range(0, 30), [0, 30], [-1, 31])])
def test_a_range_includes_and_excludes_its_ends_as_written(accepted, inside, outside):
    assert all(v in accepted for v in inside) and not any(v in accepted for v in outside)
    assert str(Range(0, 1, True, True)) == "within (0, 1)" and str(Range(1)) == "at least 1"


def test_the_locators_input_side_must_suit_its_trunks_strides():
    from bonenet.configs import LocatorConfig

    assert LocatorConfig().image_size == 320
    with pytest.raises(ValueError, match="image_size must be a multiple of 32"):
        LocatorConfig(image_size=300)
