
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import problems, run_cli

from bonenet.data.pipeline import Feed, Preparation, make_dataset
from bonenet.data.read import read_prepared
from bonenet.models.efficientnet import build_part_model, split_model
from bonenet.preprocessing.augment import AugmentConfig
from bonenet.preprocessing.recipes import get_recipe
from bonenet.training import features as bfeatures

EQUALIZE = get_recipe("equalize")

SIZE = 64
PLAIN = Preparation(EQUALIZE, SIZE)
VIEWS = Preparation(EQUALIZE, SIZE, 2, AugmentConfig(), seed=1)  # the module's cache


@pytest.fixture(scope="module")
def wrist_model():
    model, _ = build_part_model("XR_WRIST", image_size=SIZE)
    return model


@pytest.fixture(scope="module")
def paths(index):
    return index.images[index.images.part == "XR_WRIST"].path.head(12).tolist()


@pytest.fixture(scope="module")
def cache(wrist_model, paths, tmp_path_factory):
    trunk, _ = split_model(wrist_model)
    return bfeatures.compute_features(trunk, paths, VIEWS, tmp_path_factory.mktemp("features"), batch_size=5, verbose=0)


# The head's p(abnormal) on float16-stored trunk outputs against float32 ones: on the shipped
# backbone the largest difference measured was 4.2e-6 at 96 px and 2.3e-6 at 224 px (35 synthetic
# images, 5 per part; see BENCHMARKS.md). Random weights here; the test allows 1e-4.
FLOAT16_TOLERANCE = 1e-4


def test_head_on_cached_features_agrees_with_the_full_model(wrist_model, paths, cache):
    trunk, head = split_model(wrist_model)
    images = np.stack([read_prepared(p, EQUALIZE, SIZE) for p in paths]).astype(np.float32)
    expected = wrist_model.predict(images, verbose=0)
    float32 = head.predict(trunk.predict(images, verbose=0), verbose=0)
    np.testing.assert_allclose(float32, expected, atol=1e-4)
    assert cache.array.dtype == np.float16
    cached = head.predict(cache.gather(np.arange(len(paths))), verbose=0)
    np.testing.assert_allclose(cached, expected, atol=FLOAT16_TOLERANCE)


def test_an_epoch_serves_each_image_once_as_one_of_its_augmented_views(cache, paths, autograph_rewrites):
    n = len(paths)
    view0, view1 = cache.gather(np.arange(n)), cache.gather(np.arange(n, 2 * n))
    assert not np.allclose(view0[0], view1[0])  # augmented views differ from the plain image
    labels = np.arange(n) % 2
    ds = cache.dataset(np.arange(n), labels, 2, batch_size=5, training=True, seed=0)
    augmented = np.concatenate([cache.gather(np.arange(n, 3 * n))])
    epochs = []
    for _ in range(2):
        feats = np.concatenate([f for f, _ in ds])
        assert len(feats) == n  # one pass over the images, as in full mode
        # Every row is one of the pre-drawn augmented views, never the plain image.
        assert all(any(np.array_equal(f, a) for a in augmented) for f in feats)
        epochs.append(feats)
    # Views are redrawn each epoch (2 views, 12 images: the same draw twice has odds 1 in 4096).
    assert sorted(epochs[0].sum(axis=(1, 2, 3))) != sorted(epochs[1].sum(axis=(1, 2, 3)))
    plain = np.concatenate([f for f, _ in cache.dataset(np.arange(n), labels, 2, batch_size=5)])
    np.testing.assert_array_equal(plain, view0)
    assert autograph_rewrites == []  # its functions are traced as written (`as_written`)


def test_a_complete_cache_is_reused_and_any_change_gives_a_new_key(wrist_model, paths, cache, tmp_path):
    trunk, _ = split_model(wrist_model)
    again = bfeatures.compute_features(trunk, paths, VIEWS, cache.folder.parent, verbose=0)
    assert again.folder == cache.folder
    key = bfeatures.features_key(paths, VIEWS, trunk)
    assert cache.folder.name == f"features-{key}"
    other_trunk, _ = split_model(build_part_model("XR_WRIST", image_size=SIZE)[0])  # other random weights
    variants = [
        bfeatures.features_key(paths[:-1], VIEWS, trunk),
        bfeatures.features_key(paths, replace(VIEWS, recipe=get_recipe("full")), trunk),
        bfeatures.features_key(paths, VIEWS, other_trunk),
        bfeatures.features_key(paths, replace(VIEWS, views=1), trunk),
        bfeatures.features_key(paths, replace(VIEWS, augment=AugmentConfig(max_rotation=5)), trunk),
    ]
    assert len({key, *variants}) == 6
    # A file rewritten in place (same path) changes the key too.
    copies = [shutil.copy(p, tmp_path / f"{i}.png") for i, p in enumerate(paths[:2])]
    before = bfeatures.features_key(copies, PLAIN, trunk)
    shutil.copy(paths[5], copies[0])
    assert bfeatures.features_key(copies, PLAIN, trunk) != before


def test_unreadable_images_are_flagged_and_never_served(wrist_model, paths, tmp_path):
    trunk, _ = split_model(wrist_model)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    cache = bfeatures.compute_features(trunk, [paths[0], str(broken), paths[1]], PLAIN, tmp_path,
                                       verbose=0)
    assert cache.usable([0, 1, 2]).tolist() == [0, 2]
    # The reason is the cache's, so a process that reads the finished cache records the same skip.
    again = bfeatures.FeatureCache(cache.folder)
    assert [(s.path, s.stage) for s in again.skips] == [(str(broken), "read")]
    assert "truncated" in again.skips[0].reason or "corrupt" in again.skips[0].reason


def test_a_killed_computation_leaves_no_cache_behind(wrist_model, paths, tmp_path, monkeypatch):
    from bonenet.progress import Progress

    trunk, _ = split_model(wrist_model)
    calls = []
    update = Progress.update

    def crash(self, n=1):
        calls.append(n)
        if len(calls) > 1:  # a kill after the second batch was written
            raise KeyboardInterrupt
        return update(self, n)

    monkeypatch.setattr(Progress, "update", crash)
    with pytest.raises(KeyboardInterrupt):
        bfeatures.compute_features(trunk, paths, PLAIN, tmp_path, batch_size=4, verbose=0)
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


def test_cached_images_dataset_matches_an_uncached_one(paths):
    labels = np.zeros(len(paths), int)
    cached = np.concatenate([x for x, _ in make_dataset(paths, labels, 2, PLAIN, Feed(4))])
    fresh = np.concatenate([x for x, _ in make_dataset(paths, labels, 2, PLAIN, Feed(4, cache=None))])
    np.testing.assert_array_equal(cached, fresh)


def test_cache_meta_records_what_it_holds(cache, paths):
    meta = json.loads((cache.folder / "meta.json").read_text())
    assert meta["paths"] == paths and meta["views"] == 2 and meta["size"] == SIZE
    assert meta["recipe"]["name"] == "equalize"


@pytest.mark.corpus("T2")
def test_a_feature_cache_that_cannot_fit_is_refused_before_it_is_written(run, synthetic_root, small_disk, tmp_path,
                                                                         capsys):
    (small_disk / "fill").write_bytes(bytes(shutil.disk_usage(small_disk).free - 8192))
    code, err = run_cli(["train-part", "--part", "wrist", "--data-root", synthetic_root, "--models-dir", tmp_path / "r",
                      "--image-size", 64, "--weights", "none", "--epochs", 1, "--cache-dir", small_disk / "cache"],
                     capsys)
    err = problems(err)
    assert code == 2 and len(err) == 1 and f"{small_disk / 'cache'}: 0.0 MB free, the feature cache of" in err[0]
    assert [p.name for p in small_disk.iterdir()] == ["fill"] or not any((small_disk / "cache").iterdir())


def test_the_trunks_batch_size_does_not_change_the_cache(wrist_model, paths, cache, tmp_path, autograph_rewrites):
    # compute_features picks the batch for speed (`trunk_batch_size`); images must come out the same.
    trunk, _ = split_model(wrist_model)
    one_at_a_time = bfeatures.compute_features(trunk, paths, VIEWS, tmp_path, batch_size=1, verbose=0)
    # float32 rounding can move a value across a float16 rounding boundary: one float16 step at most.
    np.testing.assert_allclose(np.asarray(one_at_a_time.array, np.float32), np.asarray(cache.array, np.float32),
                               rtol=2 ** -10, atol=1e-6)
    assert autograph_rewrites == []  # the trunk's tf.function and the reading traced as written


# A computation that records its progress after its first batch of 5 images, then dies at once (SIGKILL:
# no clean-up runs), as a killed train-all would.
KILLED_CHILD = """
import json, os, signal, sys
import keras
from bonenet.training import features as F
from bonenet.models.efficientnet import build_part_model, split_model
from bonenet.data.pipeline import Preparation
from bonenet.preprocessing.augment import AugmentConfig
from bonenet.preprocessing.recipes import get_recipe
args = json.loads(sys.argv[1])
trunk, _ = split_model(build_part_model("XR_WRIST", image_size=args["size"])[0])
trunk.load_weights(args["weights"])
F.CHECKPOINT_IMAGES = 4
record = F._record_progress
def record_then_die(*a):
    record(*a)
    os.kill(os.getpid(), signal.SIGKILL)
F._record_progress = record_then_die
prep = Preparation(get_recipe("equalize"), args["size"], 2, AugmentConfig(), 1)
F.compute_features(trunk, args["paths"], prep, args["cache_dir"], batch_size=5, verbose=0)
"""


def test_a_killed_computation_resumes_from_its_last_checkpoint(wrist_model, paths, cache, tmp_path, monkeypatch):
    trunk, _ = split_model(wrist_model)
    weights, cache_dir = tmp_path / "trunk.weights.h5", tmp_path / "cache"
    trunk.save_weights(weights)
    args = {"size": SIZE, "weights": str(weights), "paths": paths, "cache_dir": str(cache_dir)}
    child = subprocess.run([sys.executable, "-c", KILLED_CHILD, json.dumps(args)], capture_output=True, text=True,
                           timeout=300, cwd=Path(__file__).resolve().parents[3])
    assert child.returncode == -9, child.stderr[-2000:]
    left = list(cache_dir.iterdir())
    assert len(left) == 1 and left[0].name.startswith(".features-")  # a temporary name, never a finished cache
    starts = []
    views_dataset = bfeatures._views_dataset

    def record_start(*a, first=0, **kw):
        starts.append(first)
        return views_dataset(*a, first=first, **kw)

    monkeypatch.setattr(bfeatures, "_views_dataset", record_start)
    resumed = bfeatures.compute_features(trunk, paths, VIEWS, cache_dir, batch_size=5, verbose=0)
    assert starts == [5]  # only the images after the checkpoint went through the trunk
    assert [p.name for p in cache_dir.iterdir()] == [resumed.folder.name] and resumed.folder.name == cache.folder.name
    np.testing.assert_allclose(np.asarray(resumed.array, np.float32), np.asarray(cache.array, np.float32),
                               rtol=2 ** -10, atol=1e-6)
    assert not (resumed.folder / "progress.json").exists()


@pytest.mark.parametrize("settled", [False, True])
def test_a_same_size_rewrite_is_caught_fresh_or_after_a_verification(wrist_model, paths, tmp_path, settled):
    """A file is trusted on its stamp only once it is older than the clock's tick could hide (racy git's rule):
    a rewrite within the same tick, or one of a file verified before, is read again and refused."""
    trunk, _ = split_model(wrist_model)
    cache = bfeatures.compute_features(trunk, paths[:6], PLAIN, tmp_path, verbose=0)
    file = cache.folder / "features.npy"
    st = os.stat(file)
    if settled:  # written long ago, and verified once in this process: its stamp is remembered
        old = st.st_mtime_ns - 10 * bfeatures.SETTLED_NS
        os.utime(file, ns=(old, old))
        bfeatures.FeatureCache(cache.folder)
    data = bytearray(file.read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    with open(file, "r+b") as f:  # in place: the same inode and size
        f.write(bytes(data))
    if not settled:  # and the same modification time, as on a file system with coarse stamps
        os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(file).st_size == st.st_size and os.stat(file).st_ino == st.st_ino
    with pytest.raises(bfeatures.CacheDamaged, match="the feature cache is damaged"):
        bfeatures.FeatureCache(cache.folder)


@pytest.mark.corpus("V5")
def test_a_damaged_cache_is_never_used_but_computed_again(wrist_model, paths, tmp_path, caplog):
    trunk, _ = split_model(wrist_model)
    make = lambda: bfeatures.compute_features(trunk, paths[:6], PLAIN, tmp_path, verbose=0)  # noqa: E731
    first = make()
    expected = first.gather(np.arange(6))
    file = first.folder / "features.npy"
    data = bytearray(file.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(b ^ 0xFF for b in data[middle:middle + 4096])  # 4 KB flipped mid-file
    file.write_bytes(bytes(data))
    with pytest.raises(bfeatures.CacheDamaged, match=f"{file}: the feature cache is damaged"):
        bfeatures.FeatureCache(first.folder)
    with caplog.at_level("WARNING", logger="bonenet"):
        again = make()
    assert any("feature cache is damaged" in r.getMessage() and "computing it again" in r.getMessage()
               for r in caplog.records)
    np.testing.assert_array_equal(again.gather(np.arange(6)), expected)  # the recomputed features, not the damage
