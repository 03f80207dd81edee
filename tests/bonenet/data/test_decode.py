import cv2
import numpy as np
import pytest

from bonenet.data.decode import ImageReadError, check_image_file, load_gray, to_gray_uint8


def _write(path, image):
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture
def gray():
    return np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 1))


def test_8bit_gray_round_trips(tmp_path, gray):
    out = load_gray(_write(tmp_path / "g.png", gray))
    assert out.dtype == np.uint8 and np.array_equal(out, gray)


def test_rgb_and_rgba_become_one_channel(tmp_path, gray):
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    bgra = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGRA)
    bgra[..., 3] = 7  # alpha must be ignored, not blended into the intensities
    for name, image in [("rgb.png", bgr), ("rgba.png", bgra)]:
        out = load_gray(_write(tmp_path / name, image))
        assert out.shape == gray.shape and np.array_equal(out, gray)


def test_16bit_is_stretched_to_full_uint8_range(tmp_path):
    image = np.linspace(1000, 4000, 64, dtype=np.uint16).reshape(8, 8)  # 12-bit data in a 16-bit file
    out = load_gray(_write(tmp_path / "16.png", image))
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # order of intensities is kept


def test_constant_16bit_image_is_black_not_nan():
    assert to_gray_uint8(np.full((4, 4), 900, np.uint16)).max() == 0


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(b"GIF89a not a png at all"), "not a PNG"),
        (lambda p: None, "does not exist"),
    ],
)
def test_bad_files_raise_naming_path_and_problem(tmp_path, make, reason):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ImageReadError, match=reason) as info:
        load_gray(path)
    assert str(path) in str(info.value)


def test_truncated_png_is_detected(tmp_path, gray):
    good = _write(tmp_path / "good.png", gray).read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(good[: len(good) // 2])
    assert "truncated" in check_image_file(path)
    with pytest.raises(ImageReadError, match="truncated"):
        load_gray(path)


@pytest.mark.corpus("H01")
@pytest.mark.parametrize("damage", ["zeroed body", "one flipped bit"])
def test_corrupt_body_with_intact_ends_is_an_error_not_a_black_image(tmp_path, gray, damage, capfd):
    good = bytearray(_write(tmp_path / "good.png", gray).read_bytes())
    if damage == "zeroed body":
        good[40:-20] = bytes(len(good) - 60)
    else:
        good[len(good) // 2] ^= 1
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(good))
    with pytest.raises(ImageReadError, match=f"{path}: corrupt PNG .* fails its CRC check"):
        load_gray(path)
    assert "libpng" not in capfd.readouterr().err  # libpng never saw it, so printed nothing of its own


def test_resource_fork_is_refused(tmp_path, gray):
    path = _write(tmp_path / "._image1.png", gray)
    assert "resource fork" in check_image_file(path)


def test_jpeg_and_dicom_are_read_by_their_bytes_not_their_names(tmp_path, gray, write_dicom):
    jpeg = tmp_path / "scan.png"  # a JPEG with the wrong suffix is still a JPEG
    assert cv2.imwrite(str(tmp_path / "j.jpg"), gray, [cv2.IMWRITE_JPEG_QUALITY, 100])
    jpeg.write_bytes((tmp_path / "j.jpg").read_bytes())
    assert np.abs(load_gray(jpeg).astype(int) - gray).max() <= 3
    assert np.array_equal(load_gray(write_dicom(tmp_path / "m2.dcm", gray)), gray)


def test_dicom_monochrome1_is_inverted_and_16_bit_stretched_like_a_16_bit_png(tmp_path, gray, write_dicom):
    assert np.array_equal(load_gray(write_dicom(tmp_path / "m1.dcm", 255 - gray, "MONOCHROME1")), gray)
    wide = (gray.astype(np.uint16) * 16 + 7)  # 12-bit detector values
    png16 = load_gray(_write(tmp_path / "w.png", wide))
    assert np.array_equal(load_gray(write_dicom(tmp_path / "w.dcm", wide)), png16)


def test_dicom_windowing_and_rescale_are_applied(tmp_path, gray, write_dicom):
    import pydicom

    path = write_dicom(tmp_path / "w.dcm", gray.astype(np.uint16) * 16)
    ds = pydicom.dcmread(path)
    ds.WindowCenter, ds.WindowWidth = 1000, 800  # shows 600..1400 only
    ds.save_as(path)
    out = load_gray(path)
    raw = gray.astype(int) * 16
    assert out[raw <= 600].max() == 0 and out[raw >= 1400].min() == 255


@pytest.mark.parametrize("kind,reason", [("frames", "multi-frame"), ("nopixels", "without pixel data"),
                                         ("cut", "corrupt DICOM|cannot be decoded"), ("cutjpeg", "truncated JPEG"),
                                         ("text", "not a PNG, JPEG or DICOM")])
def test_unusable_clinical_files_get_one_line_reasons(tmp_path, gray, write_dicom, kind, reason):
    import pydicom

    path = tmp_path / "bad"
    if kind == "frames":
        write_dicom(path, gray, frames=3)
    elif kind == "nopixels":
        ds = pydicom.dcmread(write_dicom(path, gray))
        del ds.PixelData
        ds.save_as(path)
    elif kind == "cut":
        data = write_dicom(path, gray).read_bytes()
        path.write_bytes(data[: len(data) - 300])
    elif kind == "cutjpeg":
        assert cv2.imwrite(str(tmp_path / "j.jpg"), gray)
        data = (tmp_path / "j.jpg").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_text("patient notes\n")
    with pytest.raises(ImageReadError, match=reason) as info:
        load_gray(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.corpus("A1")
def _preprocess_peak_kb(path, out):
    """`bonenet preprocess`'s peak resident memory in a fresh process, in KB."""
    import subprocess
    import sys

    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would include pytest's own memory.
    code = ("import re, run_pipeline, sys; rc = run_pipeline.main(sys.argv[1:]); "
            "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    proc = subprocess.run([sys.executable, "-c", code, "preprocess", str(path), "--out", str(out),
                           "--image-size", "224"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().splitlines()[-1])


@pytest.mark.corpus("A1")
def test_a_huge_scan_is_reduced_on_reading_and_preprocess_holds_little_more_than_its_pixels(tmp_path):
    from bonenet.data.decode import MAX_SIDE

    huge = np.zeros((10000, 10000), np.uint8)
    huge[2000:8000, 3000:7000] = 180
    path = _write(tmp_path / "huge.png", huge)
    out = load_gray(path)
    assert out.shape == (MAX_SIDE, MAX_SIDE) and out.max() == 180
    # Against the same command on a small film, so the host's libraries do not count: the 100 MB scan may be
    # decoded once, but never copied to float or held twice beside its reduction.
    small = _write(tmp_path / "small.png", cv2.resize(huge, (1000, 1000), interpolation=cv2.INTER_AREA))
    extra_kb = _preprocess_peak_kb(path, tmp_path / "p.png") - _preprocess_peak_kb(small, tmp_path / "s.png")
    assert extra_kb < 2 * huge.nbytes / 1024, f"{extra_kb / 1024:.0f} MB above the small film's peak"


def test_the_cheap_check_and_the_decoder_agree_on_format_and_size(tmp_path, gray, write_dicom):
    """A file is usable for training exactly when predict can read it: by its bytes, and at least 8×8."""
    assert cv2.imwrite(str(tmp_path / "j.jpg"), gray)
    jpeg_named_png = tmp_path / "jpeg.png"
    jpeg_named_png.write_bytes((tmp_path / "j.jpg").read_bytes())
    dicom = write_dicom(tmp_path / "scan.dcm", gray, "MONOCHROME1")
    for usable in (jpeg_named_png, dicom, _write(tmp_path / "ok.png", gray)):
        assert check_image_file(usable) is None
        assert load_gray(usable).shape == gray.shape
    tiny = [_write(tmp_path / "tiny.png", np.zeros((1, 1), np.uint8)),
            write_dicom(tmp_path / "tiny.dcm", np.zeros((4, 9), np.uint8))]
    assert cv2.imwrite(str(tmp_path / "tiny.jpg"), np.zeros((7, 30), np.uint8))
    tiny.append(tmp_path / "tiny.jpg")
    for path in tiny:
        assert "too small" in check_image_file(path), path
        with pytest.raises(ImageReadError, match=f"{path}: image is too small"):
            load_gray(path)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert check_image_file(text) == "not a PNG, JPEG or DICOM image"


@pytest.mark.corpus("B1")
def test_one_pixel_budget_from_the_header_for_training_and_predict(tmp_path, monkeypatch):
    """A bomb is refused before decoding by the cheap check (training, data-summary) and by the decoder
    (predict, serve) alike; BONENET_MAX_PIXELS moves the budget."""
    import zlib

    ok, png = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    data = bytearray(png.tobytes())
    data[16:24] = (20_000).to_bytes(4, "big") + (20_000).to_bytes(4, "big")  # 400 MP declared
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bytes(data))
    reason = "image of 20,000×20,000 pixels is over the pixel budget of 100,000,000 (set BONENET_MAX_PIXELS to raise it)"
    assert check_image_file(bomb) == reason
    with pytest.raises(ImageReadError, match=f"{bomb}: " + reason.replace("(", r"\(").replace(")", r"\)")):
        load_gray(bomb)
    monkeypatch.setenv("BONENET_MAX_PIXELS", "500000000")
    assert check_image_file(bomb) is None  # within the raised budget: the decoder decides what it holds


@pytest.mark.corpus("R4")
@pytest.mark.parametrize("orientation,turn", [(3, cv2.ROTATE_180), (6, cv2.ROTATE_90_CLOCKWISE),
                                              (8, cv2.ROTATE_90_COUNTERCLOCKWISE)])
def test_a_jpegs_exif_orientation_is_applied(tmp_path, orientation, turn):
    from PIL import Image

    from bonenet.data.decode import load_gray

    stored = np.zeros((60, 100), np.uint8)
    stored[:10, :30] = 255  # a bright corner shows which way up the image is read
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    shown = load_gray(tmp_path / "photo.jpg")
    expected = cv2.rotate(stored, turn)
    assert shown.shape == expected.shape and np.abs(shown.astype(int) - expected).mean() < 3


@pytest.mark.corpus("R7")
def test_a_colour_profile_on_a_grey_png_brings_no_bare_libpng_line(tmp_path, capfd):
    import zlib

    from bonenet.data.decode import load_gray

    gray = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    ok, png = cv2.imencode(".png", gray)
    data = png.tobytes()
    # An sRGB iCCP chunk on a grey image: libpng rejects the profile, and says so on stderr itself.
    profile = b"sRGB\0\0" + zlib.compress(b"\0" * 3000)
    chunk = len(profile).to_bytes(4, "big") + b"iCCP" + profile + zlib.crc32(b"iCCP" + profile).to_bytes(4, "big")
    data = data[:33] + chunk + data[33:]  # after the signature and IHDR
    (tmp_path / "profiled.png").write_bytes(data)
    assert np.array_equal(load_gray(tmp_path / "profiled.png"), gray)
    assert "libpng" not in capfd.readouterr().err
