"""The frozen trunk's outputs, computed once per image (and per pre-drawn augmented view) and cached on disk.

With frozen layers and frozen BatchNorm, the trunk is a fixed function of the prepared image, so a
head trained on cached trunk outputs computes exactly what the full model computes, at a fraction
of the cost: an epoch no longer decodes a PNG or runs the first 217 layers.

A cache folder is named by a key over the image files (path, size, modification time), the
recipe, the image size, the trunk's weights and layout, and the views; anything that changes the
features changes the key, so a stale cache is never read. Folders are written under a temporary
name and renamed when complete, so a killed computation leaves nothing that looks finished; the next
computation in the same folder deletes what a dead writer on this host left.
"""

import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from bonenet.data import AUTOTUNE, labelled_slices, prepare_or_flag
from preprocessing.augment import augment
from preprocessing.recipes import get_recipe

FEATURES_VERSION = 1


def weights_digest(model):
    """sha256 of a model's weight values, in layer order: identifies a trunk by content."""
    h = hashlib.sha256()
    for w in model.weights:
        # Values and shapes only: layer names are numbered per process and would differ.
        h.update(str(tuple(w.shape)).encode())
        h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
    return h.hexdigest()


def features_key(paths, recipe, size, trunk, views=0, augment_config=None, seed=0):
    """The cache key: changes whenever the files, recipe, size, trunk weights or views change."""
    h = hashlib.sha256(json.dumps({
        "version": FEATURES_VERSION,
        "recipe": get_recipe(recipe).to_json(),
        "size": int(size),
        "trunk": weights_digest(trunk),
        "outputs": [str(tuple(t.shape)) for t in trunk.outputs],
        "views": int(views),
        "augment": repr(augment_config) if views else None,
        "seed": int(seed) if views else None,
    }, sort_keys=True).encode())
    for p in paths:
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{p}\0{stamp}\0".encode())
    return h.hexdigest()[:20]


class FeatureCache:
    """A finished cache folder: one `.npy` array per trunk output, rows `view × N + image`.

    Attributes:
        paths: the images, in row order of view 0.
        ok: per image, whether it decoded (rows of unreadable images are never served).
        views: pre-drawn augmented views per image (view 0 is the unaugmented image).
        arrays: the memory-mapped feature arrays, in the trunk's output order.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        self.paths = meta["paths"]
        self.views = int(meta["views"])
        self.names = meta["outputs"]
        self.ok = np.load(self.folder / "ok.npy")
        self.arrays = [np.load(self.folder / f"{i}.npy", mmap_mode="r") for i in range(len(self.names))]

    def rows(self, images, views=True):
        """Rows for image indices `images` that decoded: view 0, plus every augmented view if `views`."""
        images = np.asarray([i for i in images if self.ok[i]], np.int64)
        n = len(self.paths)
        used = range(1 + self.views) if views else range(1)
        return np.concatenate([v * n + images for v in used]) if len(images) else images

    def gather(self, rows):
        """The feature arrays for `rows` (float32, in the trunk's output order)."""
        order = np.argsort(rows)  # sorted reads are sequential on disk
        out = [np.empty((len(rows), *a.shape[1:]), np.float32) for a in self.arrays]
        for a, o in zip(self.arrays, out, strict=True):
            o[order] = a[np.asarray(rows)[order]]
        return out

    def dataset(self, rows, labels, num_classes, batch_size, training=False, seed=0):
        """A batched dataset of ((features...), one-hot labels) over `rows`, shuffled when training."""
        rows = np.asarray(rows, np.int64)
        ds = labelled_slices(rows, labels, "cached rows")
        if training:
            ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
        shapes = [a.shape[1:] for a in self.arrays]

        def load(r, y):
            feats = tf.numpy_function(self.gather, [r], [tf.float32] * len(shapes), stateful=False)
            for f, shape in zip(feats, shapes, strict=True):
                f.set_shape((None, *shape))
            return tuple(feats), tf.one_hot(y, num_classes)

        return ds.batch(batch_size).map(load, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def _temp_prefix(folder):
    # Host and pid in the name let a later run tell a dead writer's leftovers from a live one's.
    return f".{folder.name}-{socket.gethostname()}-{os.getpid()}-"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(cache_dir):
    """Deletes temp folders left by computations on this host whose process has died (a SIGKILL).

    Returns:
        The removed paths.
    """
    removed, host = [], socket.gethostname()
    for tmp in Path(cache_dir).glob(".features-*"):
        parts = tmp.name.split("-")
        # .features-<key>-<host>-<pid>-<random>; hosts may contain dashes, so read from the right.
        if len(parts) < 5 or not parts[-2].isdigit() or "-".join(parts[2:-2]) != host:
            continue
        if not _alive(int(parts[-2])):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _prepare_views(path, index, recipe, size, views, augment_config, seed):
    image, ok = prepare_or_flag(path, recipe, size)
    stack = [image]
    for v in range(1, views + 1):
        # One generator per (seed, view, image): the same views whatever the batch or thread order.
        stack.append(augment(image, np.random.default_rng([seed, v, int(index)]), augment_config))
    return np.stack(stack), ok


def compute_features(trunk, paths, recipe, size, cache_dir, views=0, augment_config=None, seed=0, batch_size=32,
                     verbose=1):
    """Runs the trunk once over every image (and `views` augmented copies) and caches the outputs.

    Returns the existing cache when one with the same key is complete.

    Args:
        trunk: the frozen trunk (`bonenet.models.split_model`).
        paths: image files.
        recipe: the recipe the images are prepared with.
        size: input side.
        cache_dir: parent folder of cache folders.
        views: augmented views per image, drawn once (0: the unaugmented image only). Defaults to 0.
        augment_config: an `AugmentConfig`, needed when `views` > 0.
        seed: seeds the augmented views. Defaults to 0.
        batch_size: trunk batch size. Defaults to 32.
        verbose: show a progress bar. Defaults to 1.

    Returns:
        A `FeatureCache`.
    """
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("no images to compute features for")
    if views and augment_config is None:
        raise ValueError("augmented views need an augment_config")
    recipe = get_recipe(recipe)
    folder = Path(cache_dir) / f"features-{features_key(paths, recipe, size, trunk, views, augment_config, seed)}"
    if (folder / "meta.json").is_file():
        return FeatureCache(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(folder), dir=folder.parent))
    try:
        n, stride = len(paths), 1 + views
        arrays = [np.lib.format.open_memmap(tmp / f"{i}.npy", mode="w+", dtype=np.float32,
                                            shape=(stride * n, *t.shape[1:]))
                  for i, t in enumerate(trunk.outputs)]
        ok = np.zeros(n, bool)

        def prepare(path, index):
            x, flag = tf.numpy_function(
                lambda p, i: _prepare_views(p.decode(), i, recipe, size, views, augment_config, seed),
                [path, index], [tf.uint8, tf.bool], stateful=False)
            x.set_shape((stride, size, size, 3))
            return x, flag

        ds = tf.data.Dataset.from_tensor_slices((paths, np.arange(n))).map(
            prepare, num_parallel_calls=AUTOTUNE, deterministic=True).batch(batch_size).prefetch(AUTOTUNE)
        bar = keras.utils.Progbar(n, verbose=verbose, unit_name="image")
        start = 0
        for x, flags in ds:
            x, count = x.numpy().astype(np.float32), len(flags)
            ok[start:start + count] = flags.numpy()
            for v in range(stride):
                outs = trunk.predict_on_batch(x[:, v])
                outs = outs if isinstance(outs, (list, tuple)) else [outs]
                for array, out in zip(arrays, outs, strict=True):
                    array[v * n + start: v * n + start + count] = keras.ops.convert_to_numpy(out)
            start += count
            bar.add(count)
        for array in arrays:
            array.flush()
        np.save(tmp / "ok.npy", ok)
        meta = {"paths": paths, "views": views, "size": int(size), "recipe": recipe.to_dict(),
                "outputs": [t.name for t in trunk.outputs], "seed": int(seed)}
        (tmp / "meta.json").write_text(json.dumps(meta))
        del arrays
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same cache first; theirs is as good
            if not (folder / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return FeatureCache(folder)
