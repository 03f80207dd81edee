"""Self-supervised pretraining on radiographs: SimCLR's contrastive objective, alone or beside the labelled targets.

Two augmented views of every film (random crop, rotation, exposure, blur; stronger than training's clinically
safe bounds, since no label has to survive them) go through EfficientNetB0 and a small projection head; the
normalised-temperature cross-entropy (NT-Xent) asks each view to find its partner among every other view in
the batch. No label is needed, so any archive of radiographs serves: a hospital's whole collection, or the
5,824 chest films of `kermany-cxr224`. With `--objective both`, the images that have labels also learn them
(masked binary cross-entropy, as `fit_targets`) in the same steps.

Chen et al., A simple framework for contrastive learning of visual representations, ICML 2020.
"""


import keras
import numpy as np
import tensorflow as tf

from bonenet import runtime
from bonenet.data import pipeline as bdata
from bonenet.preprocessing.augment import AugmentConfig
from bonenet.preprocessing.recipes import get_recipe
from bonenet.training.losses import TEMPERATURE, masked_binary_crossentropy, nt_xent, partner_found
from bonenet.training.schedule import fit_on_schedule, known_targets

PROJECTION_UNITS = (512, 128)
# The views' augmentation: what makes the task hard enough to need anatomy. Crops of half the film's side, more
# rotation and exposure change than a part model trains on (`AugmentConfig`'s defaults).
VIEW_AUGMENT = AugmentConfig(max_rotation=20, min_crop_scale=0.5, brightness=0.2, contrast=0.3, blur_prob=0.5)
VIEWS_TEXT = (f"SimCLR contrastive views (NT-Xent, temperature {TEMPERATURE}, two views of each image under "
              f"{VIEW_AUGMENT}, projection {'-'.join(map(str, PROJECTION_UNITS))}; equal weight beside any targets)")


def build_views_model(base_model, base, targets, seed):
    """The pretraining model with a projection head on its pooled features (and its targets output when there are
    targets): a `keras.Model` with outputs {"projection"[, "targets"]}."""
    keras.utils.set_random_seed(seed)
    with runtime.precision_scope(runtime.start()["precision"]):
        pooled = base_model.get_layer("avg_pool").output
        hidden = keras.layers.Dense(PROJECTION_UNITS[0], activation="relu", name="projection_hidden")(pooled)
        outputs = {"projection": keras.layers.Dense(PROJECTION_UNITS[1], dtype="float32", name="projection")(hidden)}
    if targets:
        outputs["targets"] = base_model.output
    return keras.Model(base.input, outputs, name="views")


def fit_views(built, train, targets, config, start):
    """Trains EfficientNetB0 end to end on two views of every image of `train` (NT-Xent), and on `targets` where
    a row has them (masked binary cross-entropy, equal weight); resumable from `start.backup`.

    Args:
        built: (model, base) of `bonenet.training.pretrain.build_pretrain_model`, one sigmoid per target.
        train: a table of `path` and the target columns (NaN: not known; every image counts for the views).
        targets: the target columns learned beside the views, in output order; empty for views alone.
        config: a `PretrainConfig` (size, recipe, epochs, batch of images, rate, warm-up, seed).
        start: a `bonenet.training.pretrain.Start` (its augmentation unused: views take `VIEW_AUGMENT`).

    Returns:
        (model, its EfficientNetB0 base, steps taken).
    """
    model, base = built
    views = build_views_model(model, base, targets, config.seed)
    y = known_targets(train, targets) if targets else np.zeros((len(train), 1), np.float32)
    prep = bdata.Preparation(get_recipe(config.recipe), config.image_size, augment=VIEW_AUGMENT, seed=config.seed)
    ds = bdata.make_dataset(train["path"].tolist(), y, None, prep,
                            bdata.Feed(config.batch_size, training=True, cache=start.cache, pairs=True))
    ds = ds.map(bdata.as_written(
        lambda x, t: (x, {"projection": tf.zeros((tf.shape(x)[0], 1)), **({"targets": t} if targets else {})})))
    losses = {"projection": nt_xent, **({"targets": masked_binary_crossentropy} if targets else {})}
    steps = fit_on_schedule(views, ds, len(train), config, start.backup, loss=losses,
                            metrics={"projection": [partner_found]})
    return views, base, steps


def views_found(views, table, config):
    """Share of held-back images whose augmented view finds its partner among a batch's (chance: 1 in 2 × batch
    − 1): the contrastive objective's own figure on images it did not train on."""
    prep = bdata.Preparation(get_recipe(config.recipe), config.image_size, augment=VIEW_AUGMENT, seed=config.seed + 7)
    ds = bdata.make_dataset(table["path"].tolist(), np.zeros((len(table), 1), np.float32), None, prep,
                            bdata.Feed(config.batch_size, training=True, pairs=True))
    found = []
    with bdata.length_found_at_the_end():
        for x, _ in ds:
            found.append(keras.ops.convert_to_numpy(partner_found(None, views(x, training=False)["projection"])))
    return float(np.mean(np.concatenate(found)))
