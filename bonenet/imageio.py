"""Reading radiograph PNGs as uint8 grayscale, with errors that name the file."""

import os

import cv2
import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageReadError(ValueError):
    """An image file that cannot be used; the message names the path and the problem."""


def check_png_file(path):
    """Cheaply checks that `path` looks like a whole PNG without decoding it.

    Reads only the first and last bytes, so that indexing 40,000 files stays fast.

    Returns:
        None when the file looks usable, else a short reason string.
    """
    name = os.path.basename(str(path))
    if name.startswith("._"):
        return "macOS resource fork (._ file), not an image"
    try:
        size = os.path.getsize(path)
    except OSError:
        return "file does not exist"
    if size == 0:
        return "empty file (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(8)
        if head != PNG_SIGNATURE:
            return "not a PNG (bad signature)"
        # A complete PNG ends with the IEND chunk; a cut-off download does not.
        f.seek(max(0, size - 12))
        if b"IEND" not in f.read(12):
            return "truncated PNG (no IEND chunk)"
    return None


def to_gray_uint8(image):
    """Converts any decoded image (8/16-bit; gray, BGR or BGRA) to a uint8 H×W array.

    16-bit data is stretched from its own min to max: such files usually hold 10-12 bit
    detector values, which a fixed /257 would leave almost black.
    """
    image = np.asarray(image)
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = image[:, :, :3]
        if image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        else:
            image = image[:, :, 0]
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D or 3-D image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    image = image.astype(np.float32)
    lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return np.zeros(image.shape, np.uint8)
    return np.round((image - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def load_gray(path):
    """Loads a PNG as a uint8 H×W grayscale array, whatever its bit depth or channels.

    Raises:
        ImageReadError: naming the path and the problem (missing, empty, truncated, not a PNG).
    """
    reason = check_png_file(path)
    if reason is not None:
        raise ImageReadError(f"{path}: {reason}")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageReadError(f"{path}: corrupt PNG (OpenCV could not decode it)")
    return to_gray_uint8(image)
