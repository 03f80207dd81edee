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
