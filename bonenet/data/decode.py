"""Reading radiographs (PNG, JPEG, DICOM) as uint8 grayscale, with errors that name the file.

One decoder, `decode_gray`, serves files on disk (`load_gray`) and uploads (`bonenet.serving.serve`).
The format is told by the bytes, not by the file name.
"""

import io
import os
import zlib

import cv2
import numpy as np

from bonenet.preprocessing.filters import MIN_SIDE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
DICOM_PREAMBLE = 128  # DICOM Part 10: 128 bytes, then "DICM"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
# Longest side kept after decoding. Models see at most a few hundred pixels, and every filter
# works on float copies: a 10000×10000 scan at full size took 5.6 GB in `preprocess`.
MAX_SIDE = 2048
# Bytes read by the cheap check: enough for a PNG's IHDR, a JPEG's EXIF and SOF, a DICOM header.
HEADER_BYTES = 65536
# Most pixels an image may have, checked from its header before any decoding: a 0.8 MB PNG can
# declare 30,000 × 30,000 pixels and take gigabytes to decode. 100 MP holds any radiograph (a 43 × 43
# cm detector at 0.1 mm is 18.5 MP) and a 10,000 × 10,000 scan; BONENET_MAX_PIXELS changes it.
DEFAULT_MAX_PIXELS = 100_000_000


def max_pixels():
    """The pixel budget: `BONENET_MAX_PIXELS` when set, else `DEFAULT_MAX_PIXELS`."""
    value = os.environ.get("BONENET_MAX_PIXELS", "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_MAX_PIXELS


class ImageReadError(ValueError):
    """An image file that cannot be used; the message names the path and the problem."""


def check_image_file(path):
    """Cheaply checks that `path` is a whole, usable PNG, JPEG or DICOM without decoding its pixels.

    Reads the header and the last bytes only, so that indexing 40,000 files stays fast; the
    format is told by the bytes, as `decode_gray` tells it, and the size read from the header
    (PNG IHDR, JPEG SOF, DICOM Rows/Columns) must reach `MIN_SIDE`, as `decode_gray` requires.
    `load_gray` is the full check (`data-summary --verify`).

    Returns:
        None when the file looks usable, else a short reason string.
    """
    name = os.path.basename(str(path))
    if name.startswith("._"):
        return "macOS resource fork (._ file), not an image"
    if os.path.isdir(path):
        return "a folder, not an image"
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file (0 bytes)"
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
            f.seek(max(0, size - 32))
            tail = f.read(32)
    except FileNotFoundError:
        return "file does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    kind = image_format(head)
    if kind is None:
        return "not a PNG, JPEG or DICOM image"
    if kind == "png" and b"IEND" not in tail[-12:]:
        return "truncated PNG (no IEND chunk)"
    if kind == "jpeg" and b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker)"
    try:
        shape = header_shape(head, kind)
    except ValueError as exc:
        return str(exc)
    return size_problem(shape)


def size_problem(shape):
    """Why an image of `shape` (rows, columns) is too small or too large to use, or None when it is not."""
    if shape is None:
        return None
    if min(shape) < MIN_SIDE:
        return f"image is too small ({shape[0]}×{shape[1]}); need at least {MIN_SIDE}×{MIN_SIDE}"
    if shape[0] * shape[1] > max_pixels():
        return (f"image of {shape[0]:,}×{shape[1]:,} pixels is over the pixel budget of {max_pixels():,} "
                "(set BONENET_MAX_PIXELS to raise it)")
    return None


def header_shape(head, kind):
    """(rows, columns) read from an image's first bytes; None where the header does not say."""
    if kind == "png":
        if head[12:16] != b"IHDR":
            raise ValueError("corrupt PNG (no IHDR chunk first)")
        return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    if kind == "jpeg":
        return _jpeg_shape(head)
    return _dicom_shape(head)


def _jpeg_shape(head):
    """The frame size from the first SOF marker, walking the segments; None past `HEADER_BYTES`."""
    at = 2
    while at + 9 <= len(head):
        if head[at] != 0xFF:
            raise ValueError("corrupt JPEG (bad marker in its header)")
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        length = int.from_bytes(head[at + 2:at + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(head[at + 5:at + 7], "big"), int.from_bytes(head[at + 7:at + 9], "big")
        at += 2 + length
    return None


def _dicom_shape(head):
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(head), stop_before_pixels=True, specific_tags=["Rows", "Columns"])
        return int(ds.Rows), int(ds.Columns)
    except Exception:  # a header cut at HEADER_BYTES, or tags missing: the full decode decides
        return None


def image_format(data):
    """"png", "jpeg" or "dicom" from a file's first bytes; None for anything else."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if data[DICOM_PREAMBLE:DICOM_PREAMBLE + 4] == b"DICM":
        return "dicom"
    return None


def to_gray_uint8(image):
    """Converts any decoded image (8/16-bit or float; gray, BGR or BGRA) to a uint8 H×W array.

    Non-uint8 data is stretched from its own min to max: 16-bit files usually hold 10-12 bit
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


def _png_chunk_problem(data):
    """The first PNG chunk that overruns the file or fails its CRC, as a reason; None when all are whole.

    Checked before libpng sees the data: libpng reports such damage on stderr itself, a line
    that names no file, before OpenCV returns its failure. CRC-32 runs at memory speed.
    """
    at = len(PNG_SIGNATURE)
    while at + 12 <= len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        end = at + 8 + length
        if end + 4 > len(data):
            return "truncated PNG (a chunk runs past the end of the file)"
        kind = data[at + 4:at + 8]
        if zlib.crc32(data[at + 4:end]) != int.from_bytes(data[end:end + 4], "big"):
            return f"corrupt PNG (its {kind.decode('latin-1')!r} chunk fails its CRC check)"
        if kind == b"IEND":
            return None
        at = end + 4
    return "truncated PNG (no IEND chunk)"


def _without_colour_profile(data):
    """A PNG's bytes without its iCCP chunk: libpng checks the profile and prints its own warning line,
    naming no file, for profiles it dislikes (an sRGB profile on a grey image); a radiograph's pixel
    values do not depend on it."""
    at, out = len(PNG_SIGNATURE), [data[:len(PNG_SIGNATURE)]]
    while at + 12 <= len(data):
        end = at + 12 + int.from_bytes(data[at:at + 4], "big")
        if data[at + 4:at + 8] != b"iCCP":
            out.append(data[at:end])
        at = end
    return b"".join(out)


def _decode_raster(data, kind):
    if kind == "png" and b"iCCP" in data[:data.find(b"IDAT")]:
        data = _without_colour_profile(data)
    if kind == "jpeg" and b"\xff\xd9" not in data[-32:]:
        # libjpeg would decode the top of a cut-off file and grey out the rest, with a warning on stderr.
        raise ValueError("truncated JPEG (no end-of-image marker)")
    # A JPEG is read as a viewer shows it: OpenCV turns it by its EXIF orientation (a phone photo of a
    # film, a teleradiology export) unless told to keep the raw data, as IMREAD_UNCHANGED does.
    flags = cv2.IMREAD_GRAYSCALE if kind == "jpeg" else cv2.IMREAD_UNCHANGED
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None or image.size == 0:
        raise ValueError(f"corrupt {kind.upper()} (OpenCV could not decode it)")
    return to_gray_uint8(image)


def _decode_dicom(data):
    """A DICOM radiograph with its modality and VOI LUTs applied; MONOCHROME1 inverted."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as exc:
        raise ValueError(f"corrupt DICOM ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if "PixelData" not in ds:
        raise ValueError(f"DICOM without pixel data (SOP class {ds.get('SOPClassUID', 'unknown')}), not an image")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError(f"multi-frame DICOM ({ds.NumberOfFrames} frames); export the radiograph as a single frame")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"DICOM with {photometric} pixels; a radiograph is MONOCHROME1 or MONOCHROME2")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for missing codecs and bad pixel data
        raise ValueError(f"DICOM pixel data cannot be decoded ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    gray = to_gray_uint8(apply_voi_lut(apply_modality_lut(pixels, ds), ds))
    # MONOCHROME1 shows low values white; flip after windowing so that bone is bright, as in MURA.
    return 255 - gray if photometric == "MONOCHROME1" else gray


def decode_gray(data, name):
    """Decodes an image file's bytes (PNG, JPEG or DICOM) to a uint8 H×W grayscale array.

    Images longer than `MAX_SIDE` pixels are reduced to it (`reduce_large`); images with a side
    under `MIN_SIDE` are refused, so that a file is usable for training exactly when `predict`
    can read it.

    Args:
        data: the file's bytes.
        name: what to call it in errors (a path, or an upload's file name).

    Raises:
        ImageReadError: "`name`: problem" (empty, not an image, truncated, corrupt, multi-frame,
            too small…).
    """
    if not data:
        raise ImageReadError(f"{name}: empty file (0 bytes)")
    kind = image_format(data)
    if kind is None:
        raise ImageReadError(f"{name}: not a PNG, JPEG or DICOM image")
    try:
        # From the header, before a byte of pixels is decoded: a bomb costs nothing. A PNG's chunks
        # are checked whole first, so that a cut-off file is called truncated, not corrupt.
        problem = (_png_chunk_problem(data) if kind == "png" else None) or size_problem(header_shape(data, kind))
        if problem:
            raise ValueError(problem)
        gray = _decode_dicom(data) if kind == "dicom" else _decode_raster(data, kind)
    except (ValueError, cv2.error) as exc:  # cv2.error: OpenCV's own limits, e.g. over 2^30 pixels
        raise ImageReadError(f"{name}: {str(exc).strip().splitlines()[-1]}") from exc
    problem = size_problem(gray.shape)
    if problem:
        raise ImageReadError(f"{name}: {problem}")
    return reduce_large(gray)


def reduce_large(gray, max_side=MAX_SIDE):
    """Shrinks an image whose longest side exceeds `max_side` (area averaging), keeping its aspect."""
    h, w = gray.shape
    if max(h, w) <= max_side:
        return gray
    scale = max_side / max(h, w)
    return cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def load_gray(path):
    """Loads a PNG, JPEG or DICOM file as a uint8 H×W grayscale array.

    Raises:
        ImageReadError: naming the path and the problem (missing, empty, truncated, not an image).
    """
    if os.path.basename(str(path)).startswith("._"):
        raise ImageReadError(f"{path}: macOS resource fork (._ file), not an image")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file does not exist") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a folder, not an image") from None
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return decode_gray(data, path)
