"""Pure image filters for radiographs: uint8 arrays in, uint8 arrays out.

Every function checks its input at the door, so a float, empty or 1×1 array gets a clear
`ValueError` here rather than an assertion deep inside OpenCV.
"""

import cv2
import numpy as np

MIN_SIDE = 8

_PREWITT_X = np.array([[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]], np.float32)
_ROBERTS_A = np.array([[1, 0], [0, -1]], np.float32)
_ROBERTS_B = np.array([[0, 1], [-1, 0]], np.float32)


def check_image(image, name="image", channels=(None,)):
    """Validates a uint8 image and returns it as a NumPy array.

    Args:
        image: the array to check.
        name: what to call it in the error message. Defaults to "image".
        channels: accepted channel counts; `None` means a 2-D H×W array. Defaults to 2-D only.

    Raises:
        ValueError: naming the problem (type, dtype, shape or size) and what is accepted.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a NumPy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (0-255), got {image.dtype}; load it with bonenet.data.decode.load_gray")
    shape_ok = (image.ndim == 2 and None in channels) or (image.ndim == 3 and image.shape[2] in channels)
    if not shape_ok:
        wanted = " or ".join("H×W" if c is None else f"H×W×{c}" for c in channels)
        raise ValueError(f"{name} must be {wanted}, got shape {image.shape}")
    if image.size == 0 or min(image.shape[:2]) < MIN_SIDE:
        raise ValueError(f"{name} is too small ({image.shape[0]}×{image.shape[1]}); need at least {MIN_SIDE}×{MIN_SIDE}")
    return image


def _to_uint8_magnitude(magnitude):
    """Scales an edge magnitude to 0-255 by its own maximum (a flat image stays 0)."""
    peak = float(magnitude.max())
    if peak <= 0:
        return np.zeros(magnitude.shape, np.uint8)
    return np.round(magnitude * (255.0 / peak)).astype(np.uint8)


def sobel_edges(image, ksize=3):
    """Sobel gradient magnitude, scaled to 0-255.

    Args:
        image: uint8 H×W.
        ksize: Sobel aperture (1, 3, 5 or 7). Defaults to 3.
    """
    image = check_image(image)
    if ksize not in (1, 3, 5, 7):
        raise ValueError(f"ksize must be 1, 3, 5 or 7, got {ksize}")
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=ksize)
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=ksize)
    return _to_uint8_magnitude(cv2.magnitude(gx, gy))


def prewitt_edges(image):
    """Prewitt gradient magnitude (3×3 kernels), scaled to 0-255."""
    image = check_image(image).astype(np.float32)
    gx = cv2.filter2D(image, cv2.CV_32F, _PREWITT_X, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.filter2D(image, cv2.CV_32F, _PREWITT_X.T, borderType=cv2.BORDER_REPLICATE)
    return _to_uint8_magnitude(cv2.magnitude(gx, gy))


def roberts_edges(image):
    """Roberts cross gradient magnitude (2×2 diagonal kernels), scaled to 0-255."""
    image = check_image(image).astype(np.float32)
    # Anchor at the kernel's top-left, as the Roberts operator is defined on (x, x+1).
    ga = cv2.filter2D(image, cv2.CV_32F, _ROBERTS_A, anchor=(0, 0), borderType=cv2.BORDER_REPLICATE)
    gb = cv2.filter2D(image, cv2.CV_32F, _ROBERTS_B, anchor=(0, 0), borderType=cv2.BORDER_REPLICATE)
    return _to_uint8_magnitude(cv2.magnitude(ga, gb))


def canny_edges(image, low=None, high=None, sigma=0.33):
    """Canny edge map (0 or 255).

    Args:
        image: uint8 H×W.
        low, high: hysteresis thresholds. Default to (1 ∓ sigma) × the median intensity, the usual
            automatic rule, so the map adapts to each film's exposure.
        sigma: spread of the automatic thresholds. Defaults to 0.33.
    """
    image = check_image(image)
    if (low is None) != (high is None):
        raise ValueError("give both low and high thresholds, or neither")
    if low is None:
        median = float(np.median(image))
        low, high = max(5.0, (1.0 - sigma) * median), max(20.0, min(255.0, (1.0 + sigma) * median))
    return cv2.Canny(image, float(low), float(high), L2gradient=True)


def laplacian_sharpen(image, strength=1.5):
    """Laplacian sharpening: image − strength × ∇²image, clipped to 0-255.

    Args:
        image: uint8 H×W.
        strength: how much of the Laplacian to subtract; 0 returns the input. The literature
            uses 1.5 and 3.0. Defaults to 1.5.
    """
    image = check_image(image)
    if not 0 <= strength <= 10:
        raise ValueError(f"strength must be within 0-10, got {strength}")
    lap = cv2.Laplacian(image.astype(np.float32), cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REPLICATE)
    return np.clip(np.round(image - strength * lap), 0, 255).astype(np.uint8)


def equalize_hist(image):
    """Global histogram equalization."""
    return cv2.equalizeHist(check_image(image))


def equalize_clahe(image, clip_limit=2.0, tile_grid=8):
    """Contrast-limited adaptive histogram equalization (CLAHE).

    Args:
        image: uint8 H×W.
        clip_limit: contrast limit per tile. Defaults to 2.0.
        tile_grid: tiles per side. Defaults to 8.
    """
    image = check_image(image)
    if clip_limit <= 0 or int(tile_grid) < 1:
        raise ValueError(f"clip_limit must be > 0 and tile_grid >= 1, got {clip_limit}, {tile_grid}")
    clahe = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(tile_grid), int(tile_grid)))
    return clahe.apply(image)


def roi_box(image, threshold_fraction=0.3, dust_fraction=0.0005, margin=2):
    """Finds the box around everything on the film, leaving out black borders and empty film.

    The foreground is what lies above `threshold_fraction` of the Otsu level on a smoothed copy:
    far below the tissue/film split, so that dim soft tissue and a dim thumb across a dark gap
    from the palm count. Every connected region larger than dust widens the box, wherever it lies
    and however small it is against the largest: a rule that drops small regions to leave out
    burnt-in labels cut a real thumb, and a label inside the box costs only a little zoom. When in
    doubt the box keeps more film. docs/real-radiographs.md states the criterion by which the box is judged and
    its figure over real radiographs (`benchmarks/roi_check.py`).

    Args:
        image: uint8 H×W.
        threshold_fraction: foreground threshold as a share of the Otsu level. Defaults to 0.3.
        dust_fraction: smallest region that counts, as a share of the image's area (0.05%: a
            10×10 speck on a 512×400 image). Defaults to 0.0005.
        margin: pixels added on each side. Defaults to 2.

    Returns:
        (top, bottom, left, right), to slice as image[top:bottom, left:right]. The whole image
        when no foreground is found.
    """
    image = check_image(image)
    h, w = image.shape
    blurred = cv2.GaussianBlur(image, (5, 5), 0)
    level, _ = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if level <= 0 or blurred.max() - blurred.min() < 10:
        return 0, h, 0, w
    mask = (blurred > max(8.0, threshold_fraction * level)).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    stats = stats[1:]
    keep = stats[:, cv2.CC_STAT_AREA] >= dust_fraction * h * w
    if not keep.any():
        return 0, h, 0, w
    stats = stats[keep]
    top, left = stats[:, cv2.CC_STAT_TOP], stats[:, cv2.CC_STAT_LEFT]
    bottom, right = top + stats[:, cv2.CC_STAT_HEIGHT], left + stats[:, cv2.CC_STAT_WIDTH]
    return (max(0, int(top.min()) - margin), min(h, int(bottom.max()) + margin),
            max(0, int(left.min()) - margin), min(w, int(right.max()) + margin))


def roi_crop(image, **kwargs):
    """Crops `image` to `roi_box(image, **kwargs)`."""
    top, bottom, left, right = roi_box(image, **kwargs)
    return image[top:bottom, left:right]


def resize_longest(image, size):
    """Resizes so the longest side is `size`, keeping the aspect ratio (area filter when shrinking)."""
    image = check_image(image, channels=(None, 3))
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, new, interpolation=interp)


def pad_square(image, size):
    """Centres `image` (H×W or H×W×C, both sides ≤ size) on a black size×size canvas."""
    h, w = image.shape[:2]
    if h > size or w > size:
        raise ValueError(f"image {h}×{w} does not fit in {size}×{size}; resize it first")
    top, left = (size - h) // 2, (size - w) // 2
    return cv2.copyMakeBorder(image, top, size - h - top, left, size - w - left, cv2.BORDER_CONSTANT, value=0)


def resize_pad(image, size):
    """Resizes to fit `size`×`size` keeping the aspect ratio, then pads with black to a square."""
    if int(size) < MIN_SIDE:
        raise ValueError(f"size must be at least {MIN_SIDE}, got {size}")
    return pad_square(resize_longest(image, int(size)), int(size))
