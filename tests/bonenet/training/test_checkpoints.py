"""A model's training work folder (`bonenet.training.checkpoints`): resuming only under the settings it started with."""

import dataclasses
import json

import pytest

from bonenet.configs import TrainConfig
from bonenet.training.checkpoints import WholeBackup, WholeBest, best_val_loss, checkpoint_dir, resume_point


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



def _tiny_model():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    return model


def _tiny_fit(backup, epochs):
    import numpy as np

    model = _tiny_model()
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    history = model.fit(x, x[:, :1], epochs=epochs, verbose=0,
                        callbacks=[WholeBackup(str(backup), delete_checkpoint=False)])
    return model, history


def _killed_mid_write(monkeypatch):
    """Makes the next weights save die halfway: half a file where the weights were going, then the kill."""
    import keras

    real_save = keras.Model.save_weights

    def killed(self, filepath, *args, **kwargs):
        real_save(self, filepath, *args, **kwargs)
        with open(filepath, "r+b") as f:
            f.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save_weights", killed)


def _same_weights(path, weights):
    import numpy as np

    kept = _tiny_model()
    kept.load_weights(str(path))  # loads: the file is whole
    return all(np.array_equal(a, b) for a, b in zip(kept.get_weights(), weights, strict=True))


def test_a_kill_during_a_backup_save_leaves_the_previous_epoch_whole_and_resumable(tmp_path, monkeypatch):
    backup = tmp_path / "backup"
    model, _ = _tiny_fit(backup, epochs=1)
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 1
    assert sorted(p.name for p in backup.iterdir()) == ["latest.weights.h5", "training_metadata.json"]
    first = model.get_weights()
    _killed_mid_write(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _tiny_fit(backup, epochs=3)
    monkeypatch.undo()
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 1
    assert _same_weights(backup / "latest.weights.h5", first)
    _, history = _tiny_fit(backup, epochs=3)
    assert len(history.history["loss"]) == 2  # resumed: epochs 2 and 3


def test_a_kill_during_a_best_weights_save_leaves_the_previous_best_whole(tmp_path, monkeypatch):
    import numpy as np

    best = tmp_path / "best.weights.h5"
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")

    def fit(model):
        model.fit(x, x[:, :1], epochs=1, verbose=0, callbacks=[WholeBest(str(best), monitor="loss",
                                                                           save_best_only=True,
                                                                           save_weights_only=True)])

    model = _tiny_model()
    fit(model)
    assert [p.name for p in tmp_path.iterdir()] == ["best.weights.h5"]
    first = model.get_weights()
    _killed_mid_write(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        fit(_tiny_model())
    monkeypatch.undo()
    assert _same_weights(best, first)
