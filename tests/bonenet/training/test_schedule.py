"""The schedules of a whole-network fit: the learning rate by step and, with progressive resizing, the input side
by epoch (the images prepared once, scaled down on the fly, and a resumed fit back at its epoch's side)."""

import numpy as np
import pytest

from bonenet.configs import PretrainConfig, TrainConfig


def test_progressive_resizing_keeps_the_last_quarter_of_the_epochs_large():
    from bonenet.training.schedule import epoch_sizes, schedule_text

    assert epoch_sizes(PretrainConfig(image_size=128, early_size=96, epochs=8)) == [96] * 6 + [128] * 2
    assert epoch_sizes(PretrainConfig(image_size=128, early_size=96, epochs=5)) == [96] * 3 + [128] * 2
    assert epoch_sizes(PretrainConfig(image_size=128, early_size=96, epochs=1)) == [128]
    assert epoch_sizes(PretrainConfig(image_size=128, epochs=3)) == [128] * 3
    assert "the first 6 of 8 epochs at 96 px (scaled down from 128)" in schedule_text(
        PretrainConfig(image_size=128, early_size=96, epochs=8))
    assert "progressive" not in schedule_text(PretrainConfig(image_size=128, epochs=8))


@pytest.mark.parametrize("make", [lambda: TrainConfig(image_size=128, adapt_early_size=128),
                                  lambda: TrainConfig(image_size=128, adapt_early_size=16),
                                  lambda: PretrainConfig(image_size=96, early_size=160)])
def test_an_early_side_must_lie_below_the_final_one(make):
    with pytest.raises(ValueError, match=r"early_size must be 0 \(off\) or from 32 up to below image_size"):
        make()


def _tiny_model():
    import keras

    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(inputs)))
    model.compile("adam", "mse")
    return model


class _Seen:
    """Records, per epoch, the side the dataset serves (the first batch's images)."""

    def __init__(self, ds, follow):
        import keras

        self.sides = {}

        def record(epoch, logs=None):
            self.sides[epoch] = int(next(iter(ds))[0].shape[1])

        # after `follow` in the callback list, so it sees the side `follow` has just set
        self.callback = keras.callbacks.LambdaCallback(on_epoch_begin=record)


def test_the_images_follow_the_epochs_side_and_a_resumed_fit_takes_up_its_epochs_side(tmp_path, autograph_rewrites):
    import keras
    import tensorflow as tf

    from bonenet.training.schedule import input_side, sized_by_epoch

    config = PretrainConfig(image_size=64, early_size=32, epochs=4)  # sides 32, 32, 32, 64
    images = np.random.default_rng(0).uniform(0, 255, (8, 64, 64, 3)).astype(np.float32)

    def fit_data():
        return sized_by_epoch(tf.data.Dataset.from_tensor_slices((images, np.zeros((8, 1), np.float32))).batch(4),
                              config)

    ds, callbacks = fit_data()
    assert input_side(config) is None and len(callbacks) == 1  # the model takes either side
    (follow,) = callbacks
    follow.on_epoch_begin(3)
    assert np.array_equal(next(iter(ds))[0].numpy(), images[:4])  # the last epochs: the prepared images as they are
    follow.on_epoch_begin(0)
    assert next(iter(ds))[0].shape[1:] == (32, 32, 3)

    class Killed(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    seen = _Seen(ds, follow)
    with pytest.raises(KeyboardInterrupt):
        _tiny_model().fit(ds, epochs=4, verbose=0, shuffle=False, callbacks=[backup, follow, seen.callback, Killed()])
    assert seen.sides == {0: 32, 1: 32, 2: 32}
    ds, callbacks = fit_data()  # a new process: a new dataset and callback, the same backup
    seen = _Seen(ds, callbacks[0])
    _tiny_model().fit(ds, epochs=4, verbose=0, shuffle=False,
                      callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup")), *callbacks,
                                 seen.callback])
    assert seen.sides == {2: 32, 3: 64}
    assert autograph_rewrites == []  # the scaling is traced as written (`as_written`)


def test_without_progressive_resizing_the_dataset_and_the_model_side_stay_as_they_were():
    import tensorflow as tf

    from bonenet.training.schedule import input_side, sized_by_epoch

    ds = tf.data.Dataset.from_tensor_slices(np.zeros((2, 64, 64, 3), np.float32))
    for config in PretrainConfig(image_size=64, epochs=4), PretrainConfig(image_size=64, early_size=32, epochs=1):
        assert sized_by_epoch(ds, config) == (ds, []) and input_side(config) == 64


def test_known_targets_mark_what_a_row_does_not_know_with_minus_one():
    import pandas as pd

    from bonenet.training.schedule import known_targets

    table = pd.DataFrame({"path": ["a", "b"], "fractured": [1.0, float("nan")], "hardware": [float("nan"), 0.0]})
    y = known_targets(table, ["hardware", "fractured"])
    assert y.dtype == np.float32 and y.tolist() == [[-1.0, 1.0], [0.0, -1.0]]
