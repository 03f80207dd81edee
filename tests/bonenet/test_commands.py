"""The commands behind the command line (`bonenet.commands`); whole commands are tested through
`run_pipeline.main` in tests/test_run_pipeline.py and beside each stage."""

import json

import pytest

from bonenet import commands, console
from bonenet.configs import MAX_TRAINABLE_LAYERS, TrainConfig


@pytest.mark.corpus("V1")
def test_json_files_never_hold_a_bare_nan(tmp_path, capsys):
    out = tmp_path / "p.json"
    commands._write_json(out, [{"p_abnormal": float("nan"), "ci": [float("inf"), 0.5]}])
    assert "NaN" not in out.read_text() and "Infinity" not in out.read_text()
    assert json.loads(out.read_text()) == [{"p_abnormal": None, "ci": [None, 0.5]}]


def test_training_notes_are_remarks_on_stderr_said_only_where_they_apply(capsys):
    console.setup_console("train-all", 0)
    commands._training_notes(TrainConfig(weights="none"), {"kind": "none", "description": "random"})
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("bonenet train-all: the backbone is not ImageNet-pretrained (random)")
    commands._training_notes(TrainConfig(weights="none"), {"kind": "imagenet"})
    assert capsys.readouterr() == ("", "")
    deep = TrainConfig(weights="none", trainable_layers=MAX_TRAINABLE_LAYERS, ensemble=3)
    commands._training_notes(deep, {"kind": "none"})
    err = capsys.readouterr().err
    assert "--trainable-layers all: the whole network" in err and "--ensemble 3" in err and "K " not in err


def test_train_locator_on_the_command_line_says_what_it_measured_and_wrote(tmp_path, capsys):
    from pathlib import Path

    import run_pipeline

    fixture = Path(__file__).parents[1] / "fixtures" / "fracatlas"
    out = tmp_path / "loc.weights.h5"
    code = run_pipeline.main(["train-locator", "--fracatlas", str(fixture), "--out", str(out), "--image-size", "64",
                              "--epochs", "1"])
    printed, err = capsys.readouterr()
    assert code == 0, err
    lines = printed.strip().splitlines()[-3:]  # after Keras' epoch line
    assert lines[0].startswith("held-out all: pointing game ") and lines[1].startswith("held-out hand: ")
    assert "the image's centre" in lines[0] and "AP@50" in lines[0] and "false boxes per film" in lines[0]
    assert lines[2].startswith(f"wrote {out} (") and "box threshold" in lines[2] and out.is_file()
    assert json.loads(out.with_name("loc.json").read_text())["command"].startswith("bonenet train-locator")
