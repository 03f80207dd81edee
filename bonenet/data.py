"""tf.data input pipelines: the one adapter between the read path (`bonenet.reading`) and TensorFlow.

Decoding and the recipe run once per image and are cached; augmentation runs after the cache,
so every epoch sees fresh, seeded variations of the same prepared input. An image that only a
full decode shows to be unusable is dropped and recorded in the command's `SkipLog`, never
replaced by a blank image that keeps its label; its reason is cached with it, so a pipeline that
reads a finished cache records the same skips as the one that wrote it.
"""

import contextlib
import hashlib
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from bonenet.parts import PART_INDEX, PARTS
from bonenet.reading import try_prepared
from preprocessing.augment import AugmentConfig, augment

AUTOTUNE = tf.data.AUTOTUNE


@contextlib.contextmanager
def length_found_at_the_end():
    """Keras warns each time a dataset whose length it did not know runs out; ours do not know it
    (unreadable files are filtered out while reading), so for them that end is expected."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        yield


def _prepared_or_reason(path, recipe, size):
    image, skip = try_prepared(path, recipe, size)
    if skip is None:
        return image, b""
    return np.zeros((size, size, 3), np.uint8), skip.reason.encode()


def map_prepare(recipe, size):
    """A tf.data map function `path -> (uint8 image, reason)`, running `read_prepared` in NumPy.

    `reason` is empty for an image that was read, else why it could not be (its image is blank).
    """

    def fn(path):
        image, reason = tf.numpy_function(lambda p: _prepared_or_reason(p, recipe, size), [path],
                                          [tf.uint8, tf.string], stateful=False)
        image.set_shape((size, size, 3))
        reason.set_shape(())
        return image, reason

    return fn


def keep_readable(skips=None):
    """A tf.data filter over `(path, image, reason, ...)` keeping the images that were read,
    and recording each one that was not in `skips` (a `SkipLog`), when given."""

    def fn(path, image, reason, *rest):
        ok = tf.equal(reason, "")
        if skips is None:
            return ok
        return tf.cond(ok, lambda: ok, lambda: tf.numpy_function(skips.note, [path, reason], tf.bool,
                                                                 stateful=True))

    return fn


def map_augment(config=AugmentConfig()):
    """Returns a tf.data map function `(image, seed) -> augmented image`, seeded per element."""

    def fn(image, seed):
        out = tf.numpy_function(
            lambda im, s: augment(im, np.random.default_rng(int(s) & 0x7FFFFFFFFFFFFFFF), config),
            [image, seed], tf.uint8, stateful=False,
        )
        out.set_shape(image.shape)
        return out

    return fn


def labelled_slices(items, labels, noun):
    """`Dataset.from_tensor_slices((items, labels))`, refusing mismatched or empty inputs."""
    labels = np.asarray(labels, np.int32)
    if len(items) != len(labels):
        raise ValueError(f"{len(items)} {noun} but {len(labels)} labels")
    if len(items) == 0:
        raise ValueError(f"no {noun} to build a dataset from")
    return tf.data.Dataset.from_tensor_slices((items, labels))


def cache_key(paths, recipe, size):
    """A short hash of the image list, recipe and size; a cache under another key is never reused."""
    h = hashlib.sha256(b"path, image, reason, label\0" + recipe.to_json().encode())  # the cached element
    h.update(str(size).encode())
    for p in paths:
        h.update(str(p).encode() + b"\0")
    return h.hexdigest()[:16]


def make_dataset(paths, labels, num_classes, recipe, size, batch_size, training=False, seed=0,
                 augment_config=None, cache_dir=None, cache=True, skips=None):
    """Builds a batched dataset of (float32 0-255 images, one-hot labels).

    Args:
        paths: image file paths.
        labels: integer class per image.
        num_classes: length of the one-hot labels.
        recipe: the `Recipe`.
        size: input side.
        batch_size: global batch size.
        training: shuffle each epoch and augment (with `augment_config`). Defaults to False.
        seed: seeds shuffling and augmentation. Defaults to 0.
        augment_config: an `AugmentConfig`; None means no augmentation. Defaults to None.
        cache_dir: cache prepared images on disk here (keyed by data, recipe and size); None
            caches in memory. Defaults to None.
        cache: False decodes and prepares every image again each epoch (for comparison only).
            Defaults to True.
        skips: a `SkipLog` recording the images that could not be read. Defaults to None.
    """
    paths = [str(p) for p in paths]
    ds = labelled_slices(paths, labels, "paths")
    prepare = map_prepare(recipe, size)
    ds = ds.map(lambda p, y: (p, *prepare(p), y), num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache and cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        ds = ds.cache(str(Path(cache_dir) / f"images-{cache_key(paths, recipe, size)}"))
    elif cache:
        ds = ds.cache()
    ds = ds.filter(keep_readable(skips)).map(lambda p, x, reason, y: (x, y))
    if training:
        ds = ds.shuffle(min(len(paths), 4096), seed=seed, reshuffle_each_iteration=True)
        if augment_config is not None:
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
            aug = map_augment(augment_config)
            ds = tf.data.Dataset.zip((ds, seeds)).map(
                lambda xy, s: (aug(xy[0], s), xy[1]), num_parallel_calls=AUTOTUNE
            )
    ds = ds.batch(batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, num_classes)), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def router_examples(images):
    """(paths, labels) for the router: every image, labelled with its part index."""
    return images["path"].tolist(), images["part"].map(PART_INDEX).to_numpy()


def part_examples(images, part):
    """(paths, labels) for one part's model: that part's images, labelled with their study's label."""
    rows = images[images["part"] == part]
    return rows["path"].tolist(), rows["label"].to_numpy()


def class_weights(labels, num_classes):
    """Balanced class weights n / (k × n_c) from training counts; absent classes get weight 0."""
    counts = np.bincount(np.asarray(labels, int), minlength=num_classes).astype(float)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return {i: float(w) for i, w in enumerate(weights)}


def make_router_dataset(images, recipe, size, batch_size, **kwargs):
    """The router's dataset from an image table (see `make_dataset` for kwargs)."""
    paths, labels = router_examples(images)
    return make_dataset(paths, labels, len(PARTS), recipe, size, batch_size, **kwargs)


def make_part_dataset(images, part, recipe, size, batch_size, **kwargs):
    """One part model's dataset from an image table (see `make_dataset` for kwargs)."""
    paths, labels = part_examples(images, part)
    return make_dataset(paths, labels, 2, recipe, size, batch_size, **kwargs)
