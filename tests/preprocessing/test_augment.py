import numpy as np
import pytest

from bonenet.preprocessing.augment import AugmentConfig, apply_params, augment, rotate, sample_params


@pytest.mark.parametrize("bound", [0.0, 5.0, 15.0, 30.0])
def test_rotation_never_exceeds_its_bound(bound):
    rng = np.random.default_rng(0)
    angles = [sample_params(rng, AugmentConfig(max_rotation=bound))["angle"] for _ in range(2000)]
    assert max(abs(a) for a in angles) <= bound
    if bound:
        assert max(abs(a) for a in angles) > 0.9 * bound


def test_rotation_above_thirty_degrees_is_refused():
    with pytest.raises(ValueError, match="max_rotation"):
        AugmentConfig(max_rotation=45)


def test_rotate_turns_a_bar_by_the_angle():
    image = np.zeros((65, 65), np.uint8)
    image[30:35, 5:60] = 255  # horizontal bar
    out = rotate(image, 90)
    assert out[5:60, 30:35].mean() > 200 and out[30:35, 5:20].mean() < 50


def test_augment_is_seeded_and_keeps_shape_and_dtype():
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    a = augment(image, np.random.default_rng(7))
    b = augment(image, np.random.default_rng(7))
    c = augment(image, np.random.default_rng(8))
    assert a.shape == image.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_identity_parameters_change_nothing():
    image = np.random.default_rng(2).integers(0, 256, (40, 40)).astype(np.uint8)
    identity = {"flip": False, "angle": 0.0, "crop_scale": 1.0, "crop_offset": (0.0, 0.0),
                "brightness": 0.0, "contrast": 1.0, "blur_sigma": 0.0, "sharpen": 0.0}
    assert np.array_equal(apply_params(image, identity), image)
    flipped = apply_params(image, {**identity, "flip": True})
    assert np.array_equal(flipped, image[:, ::-1])


def test_crop_scale_stays_within_bounds():
    rng = np.random.default_rng(3)
    scales = [sample_params(rng)["crop_scale"] for _ in range(500)]
    assert min(scales) >= 0.85 and max(scales) <= 1.0
