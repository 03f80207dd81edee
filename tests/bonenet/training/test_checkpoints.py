"""A model's training work folder (`bonenet.training.checkpoints`): resuming only under the settings it started with."""

import dataclasses
import json

import pytest

from bonenet.configs import TrainConfig
from bonenet.training.checkpoints import best_val_loss, checkpoint_dir, resume_point


def test_work_folders_are_named_by_model():
    assert checkpoint_dir("run", "router").as_posix() == "run/checkpoints/router"
    assert checkpoint_dir("run", "XR_WRIST").as_posix() == "run/checkpoints/wrist"


@pytest.mark.corpus("V6")
def test_resume_refuses_changed_settings_naming_each_and_allows_more_epochs(tmp_path):
    work = tmp_path / "checkpoints" / "forearm"
    started = TrainConfig(epochs=12, image_size=64, weights="none")
    resume_point("XR_FOREARM", work, False, started)
    assert json.loads((work / "settings.json").read_text())["learning_rate"] == started.learning_rate
    (work / "backup").mkdir()
    (work / "backup" / "training_metadata.json").write_text(json.dumps({"epoch": 2}))
    changed = dataclasses.replace(started, learning_rate=0.01, image_size=96)
    with pytest.raises(ValueError) as info:
        resume_point("XR_FOREARM", work, True, changed)
    message = str(info.value)
    assert message.startswith(f"{work / 'settings.json'}: cannot --resume under other settings")
    assert "--learning-rate 0.0001 → 0.01" in message and "--image-size 64 → 96" in message and "\n" not in message
    assert (work / "backup" / "training_metadata.json").is_file()  # the checkpoint is kept for a proper resume
    resume_point("XR_FOREARM", work, True, dataclasses.replace(started, epochs=20))  # more epochs: fine
    assert (work / "backup").is_dir()


def test_the_best_loss_so_far_comes_from_the_log(tmp_path):
    log = tmp_path / "log.csv"
    assert best_val_loss(log) is None
    log.write_text("epoch,loss,val_loss\n0,1.0,0.7\n1,0.8,0.5\n2,0.6,0.6\n")
    assert best_val_loss(log) == 0.5
