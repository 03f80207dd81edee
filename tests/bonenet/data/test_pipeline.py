import numpy as np
import pytest

from bonenet.data import pipeline as data
from bonenet.data.decode import load_gray
from bonenet.data.read import SkipLog
from bonenet.digests import file_stamps
from bonenet.preprocessing.augment import AugmentConfig
from bonenet.preprocessing.recipes import get_recipe

EQUALIZE = get_recipe("equalize")


@pytest.fixture(scope="module")
def wrist_images(index):
    return index.images[(index.images.part == "XR_WRIST") & (index.images.split == "train")].head(6)


def _wrist_dataset(images, prep, feed):
    paths, labels = data.part_examples(images, "XR_WRIST")
    return data.make_dataset(paths, labels, 2, prep, feed)


@pytest.mark.parametrize("recipe", ["equalize", "full"])
def test_tf_data_adapter_gives_the_numpy_path_array(wrist_images, recipe):
    ds = _wrist_dataset(wrist_images, data.Preparation(get_recipe(recipe), 48), data.Feed(6))
    x, y = next(iter(ds))
    expected = np.stack([get_recipe(recipe).apply(load_gray(p), 48) for p in wrist_images.path])
    np.testing.assert_array_equal(x.numpy(), expected.astype(np.float32))
    np.testing.assert_array_equal(y.numpy().argmax(axis=1), wrist_images.label.to_numpy())


def test_training_pipeline_augments_with_a_seed_and_changes_per_epoch(wrist_images):
    def epoch_batches(seed):
        ds = _wrist_dataset(wrist_images, data.Preparation(EQUALIZE, 48, augment=AugmentConfig(), seed=seed),
                            data.Feed(6, training=True))
        return [next(iter(ds))[0].numpy() for _ in range(2)]

    a, b = epoch_batches(1), epoch_batches(1)
    np.testing.assert_array_equal(a[0], b[0])  # same seed, same first epoch
    assert not np.array_equal(a[0], a[1])  # a new epoch draws new augmentations
    plain = next(iter(_wrist_dataset(wrist_images, data.Preparation(EQUALIZE, 48), data.Feed(6))))[0].numpy()
    assert not np.array_equal(np.sort(a[0].ravel()), np.sort(plain.ravel()))


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_an_image_that_fails_to_decode_is_skipped_and_recorded_not_blanked(wrist_images, tmp_path, cache):
    bad = tmp_path / "corrupt.png"
    good = open(wrist_images.path.iloc[0], "rb").read()
    bad.write_bytes(good[:40] + bytes(len(good) - 60) + good[-20:])  # intact ends, broken body
    paths = [*wrist_images.path.iloc[:3], str(bad)]
    cache_dir = tmp_path / "cache" if cache == "disk" else "memory"
    for _ in range(2):  # on disk, the second pipeline reads the first one's finished cache
        skips = SkipLog()
        ds = data.make_dataset(paths, [0, 1, 0, 1], 2, data.Preparation(EQUALIZE, 32), data.Feed(8, cache=cache_dir),
                               skips)
        x, y = next(iter(ds))
        assert x.shape[0] == 3 and y.numpy().argmax(axis=1).tolist() == [0, 1, 0]
        assert [(s.path, s.stage) for s in skips] == [(str(bad), "read")]
        assert "corrupt" in list(skips)[0].reason and str(bad) not in list(skips)[0].reason


def test_class_weights_balance_the_training_counts():
    weights = data.class_weights([0, 0, 0, 1], 2)
    assert weights[0] * 3 == pytest.approx(weights[1] * 1)
    assert data.class_weights([0, 0], 3)[2] == 0.0


def test_disk_cache_is_keyed_by_data_recipe_and_size(wrist_images, tmp_path):
    key = data.images_key(wrist_images.path, EQUALIZE, 48)
    assert key != data.images_key(wrist_images.path, get_recipe("full"), 48)
    assert key != data.images_key(wrist_images.path, EQUALIZE, 64)
    assert key != data.images_key(wrist_images.path.iloc[:-1], EQUALIZE, 48)
    ds = _wrist_dataset(wrist_images, data.Preparation(EQUALIZE, 48), data.Feed(6, cache=tmp_path))
    first = next(iter(ds))[0].numpy()
    assert any(p.name.startswith(f"images-{key}") for p in tmp_path.iterdir())
    np.testing.assert_array_equal(next(iter(ds))[0].numpy(), first)


def test_an_image_edited_in_place_misses_both_caches(wrist_images, tmp_path):
    """One rule keys the image cache and the trunk-feature cache: path, size and modification time."""
    import os
    import shutil

    from bonenet.models.efficientnet import build_part_model, split_model
    from bonenet.training.features import features_key

    paths = [str(tmp_path / f"{i}.png") for i in range(3)]
    for src, dst in zip(wrist_images.path, paths, strict=False):
        shutil.copy(src, dst)
    trunk, _ = split_model(build_part_model("XR_WRIST", image_size=32, weights=None)[0])
    before = data.images_key(paths, EQUALIZE, 48), features_key(paths, data.Preparation(EQUALIZE, 48), trunk)
    st = os.stat(paths[1])
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # edited: a new modification time
    after = data.images_key(paths, EQUALIZE, 48), features_key(paths, data.Preparation(EQUALIZE, 48), trunk)
    assert before[0] != after[0] and before[1] != after[1]
    stamp, first = file_stamps(paths), os.stat(paths[0])
    os.utime(paths[0], ns=(first.st_atime_ns + 5_000_000_000, first.st_mtime_ns))  # read again: only atime moves
    assert file_stamps(paths) == stamp  # and a read does not move it
    assert file_stamps(paths[::-1]) != stamp  # the order of the images is part of it


def test_views_are_seeded_per_image_and_view_whatever_the_order(wrist_images):
    config = AugmentConfig()
    path = wrist_images.path.iloc[0]
    prep = data.Preparation(EQUALIZE, 48, views=2, augment=config, seed=3)
    a, reason = data.prepared_views(path, 7, prep)
    b, _ = data.prepared_views(path, 7, prep)
    c, _ = data.prepared_views(path, 8, prep)
    assert reason == b"" and a.shape == (3, 48, 48, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[0], EQUALIZE.apply(load_gray(path), 48))  # view 0 is the image itself
    assert not np.array_equal(a[1], c[1])  # another image index, another draw
    np.testing.assert_array_equal(a[1], data.seeded_augment(a[0], config, 3, 1, 7))  # the one seeding rule


def test_pairs_serve_two_different_views_of_each_image_side_by_side_with_its_labels(wrist_images):
    prep = data.Preparation(EQUALIZE, 48, augment=AugmentConfig(), seed=3)
    paths, labels = data.part_examples(wrist_images, "XR_WRIST")
    targets = np.arange(len(paths), dtype=np.float32)[:, None]  # one distinct label per image
    x, y = next(iter(data.make_dataset(paths, targets, None, prep, data.Feed(3, training=True, pairs=True))))
    x, y = x.numpy(), y.numpy()
    assert x.shape == (6, 48, 48, 3) and y.shape == (6, 1)
    np.testing.assert_array_equal(y[0::2], y[1::2])  # rows 2i and 2i + 1: one image, its label twice
    assert len(np.unique(y)) == 3
    for i in range(3):
        assert not np.array_equal(x[2 * i], x[2 * i + 1])  # two draws of the augmentation, not one copy
    with pytest.raises(ValueError, match="two views of each image need a training dataset with augmentation"):
        data.make_dataset(paths, targets, None, data.Preparation(EQUALIZE, 48), data.Feed(3, pairs=True))


@pytest.mark.parametrize("targets", [False, True])
def test_the_pipeline_functions_are_traced_as_written_not_rewritten_by_autograph(wrist_images, autograph_rewrites,
                                                                                   targets):
    paths, labels = data.part_examples(wrist_images, "XR_WRIST")
    labels = np.stack([labels, 1 - labels], axis=1) if targets else labels
    prep = data.Preparation(EQUALIZE, 32, augment=AugmentConfig(), seed=3)
    ds = data.make_dataset(paths, labels, 2, prep, data.Feed(4, training=True, pairs=True), SkipLog())
    x, y = next(iter(ds))
    assert x.shape == (8, 32, 32, 3) and y.shape == (8, 2)
    assert autograph_rewrites == []
