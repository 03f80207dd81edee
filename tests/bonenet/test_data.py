import numpy as np
import pytest

from bonenet import data
from bonenet.imageio import load_gray
from bonenet.reading import SkipLog
from preprocessing.augment import AugmentConfig
from preprocessing.recipes import get_recipe

EQUALIZE = get_recipe("equalize")


@pytest.fixture(scope="module")
def wrist_images(index):
    return index.images[(index.images.part == "XR_WRIST") & (index.images.split == "train")].head(6)


@pytest.mark.parametrize("recipe", ["equalize", "full"])
def test_tf_data_adapter_gives_the_numpy_path_array(wrist_images, recipe):
    ds = data.make_part_dataset(wrist_images, "XR_WRIST", get_recipe(recipe), 48, batch_size=6)
    x, y = next(iter(ds))
    expected = np.stack([get_recipe(recipe).apply(load_gray(p), 48) for p in wrist_images.path])
    np.testing.assert_array_equal(x.numpy(), expected.astype(np.float32))
    np.testing.assert_array_equal(y.numpy().argmax(axis=1), wrist_images.label.to_numpy())


def test_training_pipeline_augments_with_a_seed_and_changes_per_epoch(wrist_images):
    def epoch_batches(seed):
        ds = data.make_part_dataset(wrist_images, "XR_WRIST", EQUALIZE, 48, batch_size=6, training=True,
                                    seed=seed, augment_config=AugmentConfig())
        return [next(iter(ds))[0].numpy() for _ in range(2)]

    a, b = epoch_batches(1), epoch_batches(1)
    np.testing.assert_array_equal(a[0], b[0])  # same seed, same first epoch
    assert not np.array_equal(a[0], a[1])  # a new epoch draws new augmentations
    plain = next(iter(data.make_part_dataset(wrist_images, "XR_WRIST", EQUALIZE, 48, batch_size=6)))[0].numpy()
    assert not np.array_equal(np.sort(a[0].ravel()), np.sort(plain.ravel()))


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_an_image_that_fails_to_decode_is_skipped_and_recorded_not_blanked(wrist_images, tmp_path, cache):
    bad = tmp_path / "corrupt.png"
    good = open(wrist_images.path.iloc[0], "rb").read()
    bad.write_bytes(good[:40] + bytes(len(good) - 60) + good[-20:])  # intact ends, broken body
    paths = [*wrist_images.path.iloc[:3], str(bad)]
    cache_dir = tmp_path / "cache" if cache == "disk" else None
    for _ in range(2):  # on disk, the second pipeline reads the first one's finished cache
        skips = SkipLog()
        ds = data.make_dataset(paths, [0, 1, 0, 1], 2, EQUALIZE, 32, batch_size=8, cache_dir=cache_dir, skips=skips)
        x, y = next(iter(ds))
        assert x.shape[0] == 3 and y.numpy().argmax(axis=1).tolist() == [0, 1, 0]
        assert [(s.path, s.stage) for s in skips] == [(str(bad), "read")]
        assert "corrupt" in list(skips)[0].reason and str(bad) not in list(skips)[0].reason


def test_class_weights_balance_the_training_counts():
    weights = data.class_weights([0, 0, 0, 1], 2)
    assert weights[0] * 3 == pytest.approx(weights[1] * 1)
    assert data.class_weights([0, 0], 3)[2] == 0.0


def test_disk_cache_is_keyed_by_data_recipe_and_size(wrist_images, tmp_path):
    key = data.cache_key(wrist_images.path, EQUALIZE, 48)
    assert key != data.cache_key(wrist_images.path, get_recipe("full"), 48)
    assert key != data.cache_key(wrist_images.path, EQUALIZE, 64)
    assert key != data.cache_key(wrist_images.path.iloc[:-1], EQUALIZE, 48)
    ds = data.make_part_dataset(wrist_images, "XR_WRIST", EQUALIZE, 48, batch_size=6, cache_dir=tmp_path)
    first = next(iter(ds))[0].numpy()
    assert any(p.name.startswith(f"images-{key}") for p in tmp_path.iterdir())
    np.testing.assert_array_equal(next(iter(ds))[0].numpy(), first)
