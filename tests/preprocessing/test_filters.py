import cv2
import numpy as np
import pytest

from bonenet.preprocessing import filters

EDGE_FILTERS = [filters.sobel_edges, filters.prewitt_edges, filters.roberts_edges]


def step_image():
    image = np.full((40, 40), 50, np.uint8)
    image[:, 20:] = 200
    return image


@pytest.mark.parametrize("edge", EDGE_FILTERS + [filters.canny_edges])
def test_edge_detectors_respond_only_along_a_vertical_step(edge):
    out = edge(step_image())
    assert out.dtype == np.uint8 and out.shape == (40, 40)
    cols = np.nonzero(out.any(axis=0))[0]
    assert cols.min() >= 18 and cols.max() <= 21, cols
    assert (out[:, 18:22].max(axis=1) > 0).all()  # every row responds at the step


def test_canny_outlines_a_filled_square_with_a_closed_contour():
    image = np.zeros((64, 64), np.uint8)
    image[16:48, 16:48] = 220
    edges = filters.canny_edges(image)
    ys, xs = np.nonzero(edges)
    assert ys.min() >= 14 and ys.max() <= 49 and xs.min() >= 14 and xs.max() <= 49
    filled = edges.copy()
    mask = np.zeros((66, 66), np.uint8)
    cv2.floodFill(filled, mask, (0, 0), 128)
    assert filled[32, 32] == 0  # the flood from outside never reaches the inside: the outline is closed
    assert (edges[16:48, 16:48][4:-4, 4:-4] == 0).all()  # nothing inside


def test_sharpen_leaves_a_flat_image_unchanged():
    flat = np.full((32, 32), 117, np.uint8)
    assert np.array_equal(filters.laplacian_sharpen(flat, 3.0), flat)


def test_sharpen_raises_high_frequency_energy_monotonically():
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.normal(0, 1, (64, 64)).astype(np.float32), (0, 0), 2)
    image = np.clip(128 + 8 * texture / texture.std(), 0, 255).astype(np.uint8)

    def energy(img):
        return float(np.square(cv2.Laplacian(img.astype(np.float32), cv2.CV_32F)).mean())

    energies = [energy(filters.laplacian_sharpen(image, s)) for s in (0.0, 0.5, 1.5, 3.0)]
    assert energies == sorted(energies) and energies[0] < energies[-1]
    assert np.array_equal(filters.laplacian_sharpen(image, 0.0), image)


def test_equalizing_spreads_a_low_contrast_image():
    rng = np.random.default_rng(1)
    image = rng.integers(100, 131, (128, 128)).astype(np.uint8)
    out = filters.equalize_hist(image)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert int(out.max()) - int(out.min()) >= 0.85 * 255


def test_clahe_raises_contrast_within_its_clip_limit():
    rng = np.random.default_rng(1)
    image = rng.integers(100, 131, (128, 128)).astype(np.uint8)
    spread = [float(np.ptp(filters.equalize_clahe(image, clip_limit=c))) for c in (1.0, 2.0, 8.0)]
    assert spread[0] > np.ptp(image) and spread == sorted(spread) and spread[-1] > 0.8 * 255


def test_global_equalization_gives_a_near_linear_cdf():
    rng = np.random.default_rng(2)
    image = np.clip(rng.normal(115, 6, (128, 128)), 0, 255).astype(np.uint8)
    out = filters.equalize_hist(image)
    cdf = np.cumsum(np.bincount(out.ravel(), minlength=256)) / out.size
    levels = np.unique(out)
    linear = (levels - levels.min()) / (levels.max() - levels.min())
    assert np.abs(cdf[levels] - linear).max() < 0.1


def test_roi_crop_finds_the_content_box_inside_black_borders():
    rng = np.random.default_rng(3)
    content = np.clip(rng.normal(140, 25, (90, 70)), 40, 255).astype(np.uint8)
    image = np.zeros((200, 160), np.uint8)
    image[37:127, 51:121] = content
    image[191, 6] = 250  # a speck of dust (under 0.05% of the image once blurred) must not widen the box
    top, bottom, left, right = filters.roi_box(image)
    assert abs(top - 37) <= 4 and abs(bottom - 127) <= 4 and abs(left - 51) <= 4 and abs(right - 121) <= 4
    assert filters.roi_crop(image).shape == (bottom - top, right - left)


def test_roi_of_a_blank_image_is_the_whole_image():
    assert filters.roi_box(np.zeros((30, 40), np.uint8)) == (0, 30, 0, 40)


@pytest.mark.parametrize("shape", [(300, 200), (120, 512), (64, 64)])
def test_resize_pad_keeps_aspect_and_returns_a_square(shape):
    image = np.full(shape, 200, np.uint8)
    out = filters.resize_pad(image, 96)
    assert out.shape == (96, 96) and out.dtype == np.uint8
    rows, cols = np.nonzero(out)
    h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert abs(h / w - shape[0] / shape[1]) < 0.05


ALL_FILTERS = EDGE_FILTERS + [
    filters.canny_edges,
    filters.laplacian_sharpen,
    filters.equalize_hist,
    filters.equalize_clahe,
]


@pytest.mark.parametrize("fn", ALL_FILTERS)
def test_filters_keep_dtype_and_shape(fn):
    image = np.random.default_rng(4).integers(0, 256, (37, 53)).astype(np.uint8)
    out = fn(image)
    assert out.dtype == np.uint8 and out.shape == image.shape


@pytest.mark.parametrize("fn", ALL_FILTERS + [filters.roi_box, lambda im: filters.resize_pad(im, 32)])
@pytest.mark.parametrize(
    "bad,message",
    [
        (np.zeros((0, 0), np.uint8), "too small"),
        (np.zeros((1, 1), np.uint8), "too small"),
        (np.zeros((32, 32), np.float64), "must be uint8"),
        (np.zeros((32, 32, 2), np.uint8), "shape"),
        ("not/an/image.png", "NumPy array"),
    ],
)
def test_bad_input_gives_a_clear_error(fn, bad, message):
    with pytest.raises(ValueError, match=message):
        fn(bad)


@pytest.mark.parametrize("at_edge", [True, False])
def test_roi_keeps_a_dim_thumb_across_a_dark_gap_wherever_it_lies(at_edge):
    """The real hand whose thumb was cut (MURA patient01863): the thumb is dimmer than the palm,
    separated from it by a dark gap, small against it, and need not touch the film's edge."""
    image = np.full((400, 300), 10, np.uint8)
    image[60:340, 40:200] = 180  # palm and fingers: the largest region
    thumb = slice(262, 296) if at_edge else slice(230, 262)
    image[150:190, thumb] = 70  # the thumb: 3% of the palm's area, under half its brightness, across a gap
    top, bottom, left, right = filters.roi_box(image)
    assert right >= thumb.stop and left <= 40 and top <= 60 and bottom >= 340
    # A label beside the anatomy is kept too: when in doubt, keep more film.
    image[20:30, 20:30] = 250
    top, _, left, _ = filters.roi_box(image)
    assert top <= 20 and left <= 20
