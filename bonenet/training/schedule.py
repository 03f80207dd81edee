"""The schedules of a whole-network fit (backbone pretraining and a run's trunk adaptation): the learning rate by
step, and the input side by epoch (progressive resizing: most epochs small, the last quarter large, as fast.ai's
and EfficientNetV2's training do, because a small image costs a fraction of a large one and the early epochs learn
coarse features that do not need the detail)."""

import math

import keras
import numpy as np
import tensorflow as tf

from bonenet.data import pipeline as bdata
from bonenet.progress import keras_verbosity
from bonenet.training.checkpoints import WholeBackup


def epoch_sizes(config):
    """The input side of each epoch of a `PretrainConfig`: with `early_size` (progressive resizing), every epoch
    but the last quarter at `early_size` and those at `image_size`; otherwise every epoch at `image_size`."""
    late = math.ceil(config.epochs / 4) if config.early_size else config.epochs
    return [config.early_size] * (config.epochs - late) + [config.image_size] * late


class EpochSide(keras.callbacks.Callback):
    """Sets the side that a `sized_by_epoch` dataset scales its images to, at the start of each epoch. It goes by
    the epoch's number, so a fit resumed by `BackupAndRestore` takes up its epoch's side again."""

    def __init__(self, sizes):
        super().__init__()
        self.sizes = list(sizes)
        self.side = tf.Variable(self.sizes[0], dtype=tf.int32, trainable=False, name="epoch_side")

    def on_epoch_begin(self, epoch, logs=None):
        self.side.assign(self.sizes[epoch])


def input_side(config):
    """The side a fit's model is built for: `image_size`, or None (any side) under progressive resizing, as
    EfficientNet's weights do not depend on it."""
    return config.image_size if len(set(epoch_sizes(config))) == 1 else None


def sized_by_epoch(ds, config):
    """(dataset, callbacks) for a fit under `epoch_sizes`.

    Progressive resizing scales the images, prepared (and cached) once at `image_size`, down on the fly in the
    early epochs, so no film is read twice; the callback sets each epoch's side. Without it: `ds` as it is and no
    callback.
    """
    sizes = epoch_sizes(config)
    if input_side(config) is not None:
        return ds, []
    follow = EpochSide(sizes)

    @bdata.as_written
    def scaled(x, y):
        return tf.cond(follow.side < config.image_size,
                       lambda: tf.image.resize(x, tf.stack([follow.side, follow.side]), antialias=True),
                       lambda: x), y

    return ds.map(scaled, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE), [follow]


def learning_rate_schedule(config, steps_per_epoch):
    """Adam's rate by step: a linear warm-up over `warmup_epochs` from a hundredth of `learning_rate`, then cosine
    decay to 0 at the last step."""
    total = config.epochs * steps_per_epoch
    warmup = min(config.warmup_epochs * steps_per_epoch, total - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate / 100, warmup_target=config.learning_rate, warmup_steps=warmup,
        decay_steps=total - warmup,
    )


def schedule_text(config):
    """The learning-rate schedule of `fit_targets`, in words, for a provenance file."""
    return (f"Adam, linear warm-up {config.warmup_epochs} epochs to {config.learning_rate}, then cosine decay to 0; "
            f"AugmentConfig() augmentation{sizes_text(config)}")


def sizes_text(config):
    """The input-size schedule in words ("; progressive resizing: the first 6 of 8 epochs at 96 px …"), or "" when
    every epoch is at `image_size`."""
    sizes = epoch_sizes(config)
    early = len(sizes) - sizes.count(config.image_size)
    if not early:
        return ""
    return (f"; progressive resizing: the first {early} of {len(sizes)} epochs at {config.early_size} px (scaled "
            f"down from {config.image_size})")


def known_targets(table, targets):
    """`table`'s target columns as float32, -1 where a row does not know one (masked out of the loss)."""
    return np.nan_to_num(table[targets].to_numpy(np.float32), nan=-1.0)


def fit_on_schedule(model, ds, images, config, backup, **options):
    """Compiles `model` (Adam on `learning_rate_schedule`) and fits it on `ds`, `config.epochs` epochs at the sides
    of `sized_by_epoch`, resumable from `backup` (`WholeBackup`): the one fit of backbone pretraining, contrastive
    views and a run's trunk adaptation. `images`: how many an epoch serves; `options`: `verbose` and `class_weight`
    for the fit (defaults "auto" and None), the rest (loss, metrics) for compile. Returns the steps taken."""
    verbose, class_weight = options.pop("verbose", "auto"), options.pop("class_weight", None)
    ds, sizing = sized_by_epoch(ds, config)
    steps_per_epoch = math.ceil(images / config.batch_size)
    model.compile(keras.optimizers.Adam(learning_rate_schedule(config, steps_per_epoch)), jit_compile=False,
                  **options)
    with bdata.length_found_at_the_end():
        model.fit(ds, epochs=config.epochs, verbose=keras_verbosity(verbose), shuffle=False, class_weight=class_weight,
                  callbacks=[WholeBackup(str(backup)), *sizing])
    return steps_per_epoch * config.epochs
