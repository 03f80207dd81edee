"""The frozen trunk's outputs, computed once per image (and per pre-drawn augmented view) and cached on disk.

With frozen layers and frozen BatchNorm, and the trunk run in inference mode in both training
modes, the trunk is a fixed function of the prepared image, so a head trained on cached trunk
outputs trains the same function as full-mode training, up to the float16 storage of the outputs,
at a fraction of the cost: an epoch no longer decodes a PNG or runs the trunk (most of the network).

A cache folder is named by a key over the image files (path, size, modification time), the
recipe, the image size, the trunk's weights and layout, and the views; anything that changes the
features changes the key, so a stale cache is never read. Folders are written under a temporary
name and renamed when complete, so a killed computation leaves nothing that looks finished. Every
`CHECKPOINT_IMAGES` images a computation records how far it got; the next computation of the same cache
on this host takes over what a killed one left and resumes there (the views are seeded per image, so
they come out the same), and deletes any other leftovers.
"""

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from bonenet.data.pipeline import AUTOTUNE, as_written, labelled_slices, map_prepare
from bonenet.data.read import Skip
from bonenet.digests import cache_key, file_sha256, weights_digest
from bonenet.files import check_free_space, dead_writers_temps, remove_dead_writers_temps, temp_prefix
from bonenet.models.efficientnet import trunk_batch_size
from bonenet.progress import Progress

FEATURES_VERSION = 4  # 4: meta.json carries the features' sha256
log = logging.getLogger(__name__)
# Trunk outputs are stored in float16: 9,408 values (7×7×192 at 224 px) take 18.8 KB per image
# and view, 2.1 GB for MURA with two views. The error this adds at the head's output is measured
# in tests/bonenet/training/test_features.py and stated in docs/trunk-and-heads.md.
STORAGE_DTYPE = np.float16
# A computation records how far it got every this many images; killed, the next one resumes there.
CHECKPOINT_IMAGES = 2048


def features_key(paths, prep, trunk):
    """The cache key (`bonenet.digests.cache_key`): changes whenever the files, recipe, size, trunk weights, its
    compute precision or the views change."""
    return cache_key({
        "version": FEATURES_VERSION,
        "recipe": prep.recipe.to_json(),
        "size": int(prep.size),
        "trunk": weights_digest(trunk),
        "output": str(tuple(trunk.output.shape)),
        # A trunk trained under mixed bfloat16 computes other features than the same weights in float32.
        "compute": sorted({layer.dtype_policy.name for layer in trunk.layers}),
        "dtype": np.dtype(STORAGE_DTYPE).name,
        "views": int(prep.views),
        "augment": repr(prep.augment) if prep.views else None,
        "seed": int(prep.seed) if prep.views else None,
    }, paths)


class CacheDamaged(ValueError):
    """A finished cache whose features no longer match the checksum written with them."""


# A file stamp (size, mtime) proves nothing about a rewrite within the file system's timestamp tick, so,
# as git does with "racily clean" entries, a verification is remembered only for a file last written this
# long before it was verified: any later rewrite then carries a later mtime.
SETTLED_NS = 2_000_000_000
_VERIFIED = {}  # (path, inode, size, mtime_ns) → the sha256 found, for settled files only


def _sha256_of(path):
    """The file's sha256, read again unless this process verified the same settled file before
    (`train-all` opens one cache for eight models)."""
    st = os.stat(path)
    stamp = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if stamp in _VERIFIED:
        return _VERIFIED[stamp]
    digest = file_sha256(path)
    if time.time_ns() - st.st_mtime_ns > SETTLED_NS:
        _VERIFIED[stamp] = digest
    return digest


def verify_features(path, expected):
    """Refuses a cache whose `features.npy` differs from the sha256 written with it (flipped bytes, a
    truncated copy, a same-size rewrite), naming the file. A cache written before checksums (`expected` None)
    is refused too."""
    if expected is None or _sha256_of(path) != expected:
        raise CacheDamaged(f"{path}: the feature cache is damaged (its sha256 is not the one written with it)")


class FeatureCache:
    """A finished cache folder: the trunk's output per image and view, rows `view × N + image`.

    Attributes:
        paths: the images, in row order of view 0.
        skips: the images that could not be read, as `Skip`s (their rows are never served).
        seconds: how long computing the cache took: {"waiting_for_input", "trunk"}.
        views: pre-drawn augmented views per image (view 0 is the unaugmented image).
        array: the memory-mapped features (float16).
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        verify_features(self.folder / "features.npy", meta.get("sha256"))
        self.paths = meta["paths"]
        self.views = int(meta["views"])
        self.skips = [Skip(path, reason) for path, reason in meta["unread"].items()]
        self.seconds = meta.get("seconds", {})
        unread = set(meta["unread"])
        self.ok = np.asarray([p not in unread for p in self.paths], bool)
        self.array = np.load(self.folder / "features.npy", mmap_mode="r")

    @property
    def nbytes_per_row(self):
        """Bytes one image-and-view takes on disk."""
        return int(np.prod(self.array.shape[1:])) * self.array.dtype.itemsize

    def usable(self, images):
        """The image indices among `images` that decoded."""
        return np.asarray([i for i in images if self.ok[i]], np.int64)

    def gather(self, rows):
        """The features for `rows`, as float32."""
        rows = np.asarray(rows)
        order = np.argsort(rows)  # sorted reads are sequential on disk
        out = np.empty((len(rows), *self.array.shape[1:]), np.float32)
        out[order] = self.array[rows[order]]
        return out

    def dataset(self, images, labels, num_classes, batch_size, training=False, seed=0):
        """A batched dataset of (features, one-hot labels), one row per image.

        Training shuffles and, each epoch, serves each image as one of its pre-drawn augmented
        views chosen at random (seeded), so an epoch is one pass over the images, as in full
        mode. Otherwise every image is served unaugmented (view 0).

        Args:
            images: image indices (into `paths`); unreadable ones must be left out (`usable`).
            labels: one label per image.
        """
        images = np.asarray(images, np.int64)
        ds = labelled_slices(images, labels, "cached images")
        n, views = len(self.paths), self.views
        if training:
            ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
            if views:
                draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
                ds = tf.data.Dataset.zip((ds, draws)).map(
                    as_written(lambda iy, r: (iy[0] + (1 + r % views) * n, iy[1])))
        shape = self.array.shape[1:]

        @as_written
        def load(r, y):
            feats = tf.numpy_function(self.gather, [r], tf.float32, stateful=False)
            feats.set_shape((None, *shape))
            return feats, tf.one_hot(y, num_classes)

        return ds.batch(batch_size).map(load, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def _views_dataset(paths, prep, batch_size, first=0):
    """Batches of (uint8 N×views+1×S×S×3 prepared images and views, read-failure reasons), in order,
    from image `first` on (its index seeds its views, so a resumed computation draws the same)."""
    prepare = map_prepare(prep, stacked=True)
    ds = tf.data.Dataset.from_tensor_slices((paths[first:], np.arange(first, len(paths))))
    return ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True).batch(batch_size).prefetch(AUTOTUNE)


def _write_features(trunk, ds, array, bar, progress, tmp):
    """Runs the trunk over `ds`, filling `array` (views × images × the trunk's output) from image
    `progress["done"]` on.

    `progress` ({"done": images written, "unread": {path index: reason}, "seconds": {"waiting_for_input":
    seconds the trunk waited for read and prepared batches, "trunk": seconds in the trunk and writing its
    output}}) is updated as it goes, and recorded in `tmp` every `CHECKPOINT_IMAGES` images.
    """
    # One traced call of the trunk in inference mode; unlike `predict_on_batch`, it gives each
    # image's row once under a MirroredStrategy too (read in cross-replica context).
    encode = tf.function(lambda x: trunk(x, training=False), reduce_retracing=True, autograph=False)
    seconds, unread = progress["seconds"], progress["unread"]
    for key in ("waiting_for_input", "trunk"):
        seconds.setdefault(key, 0.0)
    start, recorded = progress["done"], progress["done"]
    if start:  # resumed
        bar.update(start)
    batches = iter(ds)
    while True:
        waited = time.perf_counter()
        try:
            x, reasons = next(batches)
        except StopIteration:
            break
        began = time.perf_counter()
        seconds["waiting_for_input"] += began - waited
        x, reasons = x.numpy().astype(np.float32), reasons.numpy()
        unread.update({str(start + i): r.decode() for i, r in enumerate(reasons) if r})
        for v in range(len(array)):
            array[v, start: start + len(x)] = np.asarray(encode(tf.constant(x[:, v])))
        start += len(x)
        progress["done"] = start
        seconds["trunk"] += time.perf_counter() - began
        bar.update(len(x))
        if start - recorded >= CHECKPOINT_IMAGES and start < array.shape[1]:
            _record_progress(tmp, array, progress)
            recorded = start
    bar.close()


def _record_progress(tmp, array, progress):
    """Makes what is written so far durable, then records how far it goes (a killed run resumes there)."""
    array.flush()
    record = tmp / "progress.json.tmp"
    record.write_text(json.dumps(progress))
    os.replace(record, tmp / "progress.json")


def _resumable(folder, shape):
    """A killed computation's temporary folder for `folder` (this host, a dead writer, recorded progress and
    the expected array), renamed as this process's own, with its progress; else (None, None).

    Every other temporary folder a dead writer left for `folder` is deleted.
    """
    for tmp in dead_writers_temps(folder):
        try:
            progress = json.loads((tmp / "progress.json").read_text())
            if np.load(tmp / "features.npy", mmap_mode="r").shape != shape:
                continue
        except (OSError, ValueError):
            continue
        mine = folder.parent / f"{temp_prefix(folder)}resumed"
        os.replace(tmp, mine)
        remove_dead_writers_temps(folder)
        return mine, progress
    remove_dead_writers_temps(folder)
    return None, None


def _start_or_resume(folder, shape, what):
    """(temporary folder, progress, writable array) of a cache of `shape`: a killed computation's, to resume
    (`_resumable`), else a new one, once the disk has room for `what`."""
    tmp, progress = _resumable(folder, shape)
    if tmp is not None:
        return tmp, progress, np.load(tmp / "features.npy", mmap_mode="r+")
    check_free_space(folder.parent, int(np.prod(shape)) * np.dtype(STORAGE_DTYPE).itemsize, what)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(folder), dir=folder.parent))
    array = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=STORAGE_DTYPE, shape=shape)
    return tmp, {"done": 0, "unread": {}, "seconds": {}}, array


def compute_features(trunk, paths, prep, cache_dir, batch_size=None, verbose=1):
    """Runs the trunk once over every image (and `prep.views` augmented copies) and caches the outputs.

    Returns the existing cache when one with the same key is complete. Images that cannot be read
    are recorded in the cache with their reasons (`FeatureCache.skips`).

    Args:
        trunk: the frozen trunk (`bonenet.models.efficientnet.split_model`).
        paths: image files.
        prep: the `bonenet.data.pipeline.Preparation`: recipe, size, and the augmented views per image, drawn
            once with its `augment` and `seed` (0 views: the unaugmented image only).
        cache_dir: parent folder of cache folders.
        batch_size: images per trunk call (each call holds one view of them). Defaults to
            `bonenet.models.efficientnet.trunk_batch_size(size)`, the fastest on this machine.
        verbose: show progress (`bonenet.progress`). Defaults to 1.

    Returns:
        A `FeatureCache`.
    """
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("no images to compute features for")
    batch_size = batch_size or trunk_batch_size(prep.size)
    views = prep.views
    if views and prep.augment is None:
        raise ValueError("augmented views need an augmentation (`Preparation.augment`)")
    folder = Path(cache_dir) / f"features-{features_key(paths, prep, trunk)}"
    finished = _finished(folder)
    if finished is not None:
        return finished
    folder.parent.mkdir(parents=True, exist_ok=True)
    n, stride = len(paths), 1 + views
    shape = (stride * n, *trunk.output.shape[1:])
    tmp, progress, array = _start_or_resume(folder, shape, f"the feature cache of {n:,} images × {stride} view(s)")
    resumed = f", resuming at image {progress['done']:,}" if progress["done"] else ""
    try:
        bar = Progress(n, f"trunk features of {n:,} train images × {stride} view(s) (the unaugmented image and "
                          f"{views} augmented), once, into {folder}{resumed}", enabled=bool(verbose))
        ds = _views_dataset(paths, prep, batch_size, first=progress["done"])
        _write_features(trunk, ds, array.reshape(stride, n, *shape[1:]), bar, progress, tmp)
        array.flush()
        unread = {paths[int(i)]: reason for i, reason in sorted(progress["unread"].items(), key=lambda x: int(x[0]))}
        meta = {"paths": paths, "views": views, "size": int(prep.size), "recipe": prep.recipe.to_dict(),
                "output": trunk.output.name, "dtype": np.dtype(STORAGE_DTYPE).name, "seed": int(prep.seed),
                "unread": unread, "seconds": {k: round(v, 2) for k, v in progress["seconds"].items()}}
        (tmp / "progress.json").unlink(missing_ok=True)
        (tmp / "meta.json").write_text(json.dumps({**meta, "sha256": file_sha256(tmp / "features.npy")}))
        del array
        _publish(tmp, folder)
    except BaseException:
        # A recorded checkpoint stays for the next run to resume from (`_resumable`); its name never
        # looks finished. Anything else goes.
        if not (tmp / "progress.json").is_file():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)  # left only when another process published the same cache first
    return FeatureCache(folder)


def _finished(folder):
    """The finished cache in `folder`, or None when there is none; a damaged one is removed, to be computed
    again, since no model may train on damaged features."""
    if not (folder / "meta.json").is_file():
        return None
    try:
        return FeatureCache(folder)
    except CacheDamaged as exc:
        log.warning(f"{exc}; computing it again")
        shutil.rmtree(folder)
        return None


def _publish(tmp, folder):
    """Renames a finished cache into place; another process that finished the same cache first wins."""
    try:
        os.replace(tmp, folder)
    except OSError:
        if not (folder / "meta.json").is_file():
            raise
