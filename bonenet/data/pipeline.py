"""tf.data input pipelines: the one adapter between the read path (`bonenet.data.read`) and TensorFlow.

Decoding and the recipe run once per image and are cached; augmentation runs after the cache,
so every epoch sees fresh, seeded variations of the same prepared input. An image that only a
full decode shows to be unusable is dropped and recorded in the command's `SkipLog`, never
replaced by a blank image that keeps its label; its reason is cached with it, so a pipeline that
reads a finished cache records the same skips as the one that wrote it.
"""

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from bonenet.data.read import try_prepared
from bonenet.digests import cache_key
from bonenet.parts import PART_INDEX
from bonenet.preprocessing.augment import AugmentConfig, augment

AUTOTUNE = tf.data.AUTOTUNE
# Every function BoneNet hands to tf.data is traced as written, not rewritten by AutoGraph (and the feature cache's
# tf.function is built with autograph=False): their control flow is TensorFlow's own (`tf.cond`) or Python on Python
# values, so the rewrite buys nothing, costs tracing time, and on Python 3.13 makes gast warn for each function.
as_written = tf.autograph.experimental.do_not_convert
MAX_SEED = 0x7FFFFFFFFFFFFFFF  # NumPy seeds are non-negative; tf.data's random stream is signed


@dataclass(frozen=True)
class Preparation:
    """How each image becomes a model's input: the recipe, the input side, and the seeded augmentation.

    `views` augmented copies are drawn once per image for a cache (`prepared_views`); a live training dataset
    augments afresh every epoch with `augment` instead. None of augmentation: `augment` None.
    """

    recipe: object  # a `Recipe`
    size: int
    views: int = 0
    augment: AugmentConfig = None
    seed: int = 0


@dataclass(frozen=True)
class Feed:
    """How a dataset serves its images: the batch size, whether it trains (shuffled each epoch by the
    preparation's seed, and augmented), and where prepared images are cached: "memory", a folder (keyed by
    the data, recipe and size), or None to read and prepare every image again each epoch (for comparison).

    `pairs`, a training dataset serves two independently augmented views of each image, adjacent in the batch
    (rows 2i and 2i + 1; a batch holds 2 × `batch_size` images) and each with its image's labels, for
    contrastive pretraining (`bonenet.training.contrastive`)."""

    batch_size: int
    training: bool = False
    cache: object = "memory"
    pairs: bool = False


@contextlib.contextmanager
def length_found_at_the_end():
    """Keras warns each time a dataset whose length it did not know runs out; ours do not know it
    (unreadable files are filtered out while reading), so for them that end is expected."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        yield


def seeded_augment(image, config, seed, *key):
    """`augment` with a generator of its own for (`seed`, *`key`): the one seeding rule of every
    augmentation, so the same element gets the same draw whatever the batch or thread order."""
    return augment(image, np.random.default_rng([int(seed) & MAX_SEED, *(int(k) & MAX_SEED for k in key)]), config)


def prepared_views(path, index, prep):
    """`try_prepared` of one image plus `prep.views` augmented copies, each seeded by (`prep.seed`, view, `index`).

    Returns:
        (uint8 (1 + views)×size×size×3, b"") for an image that was read, or (blank stack, the reason).
    """
    image, skip = try_prepared(path, prep.recipe, prep.size)
    if skip is not None:
        return np.zeros((1 + prep.views, prep.size, prep.size, 3), np.uint8), skip.reason.encode()
    augmented = [seeded_augment(image, prep.augment, prep.seed, v, index) for v in range(1, prep.views + 1)]
    return np.stack([image, *augmented]), b""


def map_prepare(prep, stacked=False):
    """The one tf.data map that reads and prepares images (`bonenet.data.read.try_prepared`), in NumPy.

    It maps `path -> (uint8 S×S×3 image, reason)`; `stacked`, it maps `(path, index) -> (uint8
    (1 + views)×S×S×3 stack, reason)`, the image then its pre-drawn augmented views (`prepared_views`).
    `reason` is empty for an image that was read, else why it could not be (its pixels are blank and must
    never be used).
    """
    stride = 1 + prep.views if stacked else 1
    single = prep if stacked else Preparation(prep.recipe, prep.size)

    @as_written
    def fn(path, index=0):
        x, reason = tf.numpy_function(lambda p, i: prepared_views(p.decode(), i, single),
                                      [path, index], [tf.uint8, tf.string], stateful=False)
        x.set_shape((stride, prep.size, prep.size, 3))
        reason.set_shape(())
        return (x if stacked else x[0]), reason

    return fn


def keep_readable(skips=None):
    """A tf.data filter over `(path, image, reason, ...)` keeping the images that were read,
    and recording each one that was not in `skips` (a `SkipLog`), when given."""

    @as_written
    def fn(path, image, reason, *rest):
        ok = tf.equal(reason, "")
        if skips is None:
            return ok
        return tf.cond(ok, lambda: ok, lambda: tf.numpy_function(skips.note, [path, reason], tf.bool,
                                                                 stateful=True))

    return fn


def map_augment(config=AugmentConfig(), seed=0):
    """Returns a tf.data map function `(image, draw) -> augmented image`, seeded by (`seed`, draw)
    (`seeded_augment`), `draw` coming from a seeded `Dataset.random` stream that changes each epoch."""

    @as_written
    def fn(image, draw):
        out = tf.numpy_function(lambda im, d: seeded_augment(im, config, seed, d), [image, draw], tf.uint8,
                                stateful=False)
        out.set_shape(image.shape)
        return out

    return fn


def labelled_slices(items, labels, noun):
    """`Dataset.from_tensor_slices((items, labels))`, refusing mismatched or empty inputs.

    `labels` are class indices (n,), or rows of float targets (n×k) for multi-label training.
    """
    labels = np.asarray(labels)
    labels = labels.astype(np.float32) if labels.ndim == 2 else labels.astype(np.int32)
    if len(items) != len(labels):
        raise ValueError(f"{len(items)} {noun} but {len(labels)} labels")
    if len(items) == 0:
        raise ValueError(f"no {noun} to build a dataset from")
    return tf.data.Dataset.from_tensor_slices((items, labels))


def images_key(paths, recipe, size):
    """The key of a cache of prepared images (`bonenet.digests.cache_key` of the recipe, the size and the files)."""
    return cache_key({"element": "path, image, reason, label", "recipe": recipe.to_json(), "size": int(size)}, paths, 16)


def make_dataset(paths, labels, num_classes, prep, feed, skips=None):
    """Builds a batched dataset of (float32 0-255 images, one-hot labels), or of (images, float targets) when
    `labels` are rows of targets (n×k, for multi-label pretraining; `num_classes` is then unused).

    Args:
        paths: image file paths.
        labels: integer class per image.
        num_classes: length of the one-hot labels.
        prep: a `Preparation` (recipe, size; when training, the seed and augmentation).
        feed: a `Feed` (batch size, training, cache).
        skips: a `SkipLog` recording the images that could not be read. Defaults to None.
    """
    if feed.pairs and not (feed.training and prep.augment is not None):
        raise ValueError("two views of each image need a training dataset with augmentation")
    paths = [str(p) for p in paths]
    ds = labelled_slices(paths, labels, "paths")
    prepare = map_prepare(prep)
    ds = ds.map(as_written(lambda p, y: (p, *prepare(p), y)), num_parallel_calls=AUTOTUNE, deterministic=True)
    if feed.cache == "memory":
        ds = ds.cache()
    elif feed.cache is not None:
        Path(feed.cache).mkdir(parents=True, exist_ok=True)
        ds = ds.cache(str(Path(feed.cache) / f"images-{images_key(paths, prep.recipe, prep.size)}"))
    ds = ds.filter(keep_readable(skips)).map(as_written(lambda p, x, reason, y: (x, y)))
    if feed.training:
        ds = ds.shuffle(min(len(paths), 4096), seed=prep.seed, reshuffle_each_iteration=True)
        if prep.augment is not None:
            # One seeded stream of draws per view; a single view draws from the stream it always has.
            draws = [tf.data.Dataset.random(seed=prep.seed + v, rerandomize_each_iteration=True)
                     for v in range(2 if feed.pairs else 1)]
            aug = map_augment(prep.augment, prep.seed)
            ds = tf.data.Dataset.zip((ds, *draws)).map(as_written(
                lambda xy, *s: (tf.stack([aug(xy[0], d) for d in s]) if feed.pairs else aug(xy[0], s[0]), xy[1])),
                num_parallel_calls=AUTOTUNE,
            )
    ds = ds.batch(feed.batch_size)
    if feed.pairs:  # (B, 2, S, S, 3) to (2B, S, S, 3): image i's views at rows 2i and 2i + 1, labels repeated
        ds = ds.map(as_written(lambda x, y: (tf.reshape(x, (-1, *x.shape[2:])), tf.repeat(y, 2, axis=0))),
                    num_parallel_calls=AUTOTUNE)
    if np.ndim(labels) == 2:  # float targets, as they are
        ds = ds.map(as_written(lambda x, y: (tf.cast(x, tf.float32), y)), num_parallel_calls=AUTOTUNE)
    else:
        ds = ds.map(as_written(lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, num_classes))),
                    num_parallel_calls=AUTOTUNE)
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
