"""`predict` on what clinicians hold: DICOM and JPEG as well as PNG, bad inputs as error entries,
and heat maps that do not dress up a normal image as a finding."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import as_nobody, run_cli

import run_pipeline
from bonenet.data.decode import load_gray
from bonenet.inference import gradcam

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def radiograph(index):
    path = index.images[(index.images.part == "XR_HAND") & (index.images.split == "valid")].path.iloc[0]
    return load_gray(path)


def _predict(args, tmp_path, name="out"):
    out = tmp_path / f"{name}.json"
    code = run_pipeline.main(["predict", *map(str, args), "--json", str(out)])
    return code, json.loads(out.read_text())


def test_dicom_and_jpeg_give_the_png_answer(full_run, radiograph, tmp_path, write_dicom):
    wide = radiograph.astype(np.uint16) * 16 + 3  # a 12-bit detector's values
    files = {
        "png": tmp_path / "a.png", "mono2": tmp_path / "a.dcm", "mono1": tmp_path / "b.dcm",
        "png16": tmp_path / "w.png", "dicom16": tmp_path / "w.dcm", "jpeg": tmp_path / "a.jpg",
    }
    cv2.imwrite(str(files["png"]), radiograph)
    cv2.imwrite(str(files["png16"]), wide)
    cv2.imwrite(str(files["jpeg"]), radiograph, [cv2.IMWRITE_JPEG_QUALITY, 95])
    write_dicom(files["mono2"], radiograph)
    write_dicom(files["mono1"], 255 - radiograph, "MONOCHROME1")
    write_dicom(files["dicom16"], wide)
    code, results = _predict([*files.values(), "--models-dir", full_run], tmp_path)
    assert code == 0
    p = {name: r["p_abnormal"] for name, r in zip(files, results, strict=True)}
    assert p["mono2"] == pytest.approx(p["png"], abs=1e-6)
    assert p["mono1"] == pytest.approx(p["png"], abs=1e-6)
    assert p["dicom16"] == pytest.approx(p["png16"], abs=1e-6)
    assert p["jpeg"] == pytest.approx(p["png"], abs=0.02)  # quality-95 JPEG: small pixel error


@pytest.mark.corpus("S2")
def test_bad_inputs_are_one_line_error_entries_in_input_order(full_run, radiograph, tmp_path, capsys):
    good1, good2 = tmp_path / "g1.png", tmp_path / "g2.jpg"
    cv2.imwrite(str(good1), radiograph)
    cv2.imwrite(str(good2), radiograph)
    empty, texts = tmp_path / "empty", tmp_path / "texts"
    empty.mkdir()
    texts.mkdir()
    (texts / "notes.txt").write_text("not an image")
    (texts / "scan.png").write_text("a text file with an image's name")
    missing = tmp_path / "missing.dcm"
    code, results = _predict([good1, empty, texts, good2, missing, "--models-dir", full_run,
                              "--csv", tmp_path / "out.csv"], tmp_path)
    assert code == 1
    order = [r.get("study", r["path"]) for r in results]
    assert order == [str(good1), str(empty), str(texts / "scan.png"), str(texts), str(texts / "notes.txt"),
                     str(good2), str(missing)]
    errors = {r["path"]: r["error"] for r in results if "error" in r}
    assert "no PNG, JPEG or DICOM images" in errors[str(empty)]
    assert "not a PNG, JPEG or DICOM image" in errors[str(texts / "scan.png")]
    assert "no readable images" in errors[str(texts)] and "does not exist" in errors[str(missing)]
    assert all("\n" not in e for e in errors.values())
    assert [r["p_abnormal"] is not None for r in results if "error" not in r and "skipped" not in r] == [True, True]
    table = pd.read_csv(tmp_path / "out.csv")
    assert list(table.path) == order and table.error.notna().sum() == 4 and table.skipped.notna().sum() == 1
    console = capsys.readouterr()
    assert "1 input(s)" not in console.err  # the count is right: four
    error_line = next(line for line in console.out.splitlines() if line.startswith(str(texts / "scan.png")))
    assert error_line.count(str(texts / "scan.png")) == 1  # the path once, then the problem


@pytest.mark.corpus("R5")
def test_what_a_folder_holds_besides_images_is_listed_as_skipped(full_run, radiograph, tmp_path, capsys, write_dicom):
    study = tmp_path / "study1"
    (study / "empty").mkdir(parents=True)
    cv2.imwrite(str(study / "image1.png"), radiograph)
    write_dicom(study / "IM000002", radiograph)  # DICOM exports often have no suffix: read by its bytes
    (study / "notes.txt").write_text("not an image")
    (study / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (study / "._image1.png").write_bytes(b"\0\5\26\7")
    (study / "gone.png").symlink_to(tmp_path / "nowhere.png")
    code, results = _predict([study, "--models-dir", full_run, "--csv", tmp_path / "out.csv"], tmp_path)
    assert code == 0  # junk beside the images is not a failure
    skipped = {Path(r["path"]).name: r["skipped"] for r in results if "skipped" in r}
    assert skipped == {".DS_Store": "not a PNG, JPEG or DICOM image", "._image1.png": "macOS resource fork (._ file), "
                       "not an image", "empty": "empty folder", "gone.png": "broken link (its target does not exist)",
                       "notes.txt": "not a PNG, JPEG or DICOM image"}
    assert next(r for r in results if "study" in r)["images"] == [str(study / "IM000002"), str(study / "image1.png")]
    out = capsys.readouterr().out
    assert f"{study / 'notes.txt'}: skipped: not a PNG, JPEG or DICOM image" in out
    assert pd.read_csv(tmp_path / "out.csv").skipped.notna().sum() == 5


def _run_at_threshold(full_run, threshold, radiograph, tmp_path):
    """A copy of the session's run whose part models decide at `threshold`, and an image to predict: (run, image)."""
    run_dir = tmp_path / "run"
    shutil.copytree(full_run, run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for key, entry in manifest["models"].items():
        if key != "router":
            entry["tuning"] = {"threshold": threshold, "studies": 3}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), radiograph)
    return run_dir, image


@pytest.mark.parametrize("threshold,abnormal", [(1.0 - 1e-9, False), (1e-6, True)])
def test_a_normal_gradcam_has_no_box_and_says_normal(full_run, radiograph, tmp_path, threshold, abnormal):
    run_dir, image = _run_at_threshold(full_run, threshold, radiograph, tmp_path)
    code, (result,) = _predict([image, "--models-dir", run_dir, "--cam-dir", tmp_path / "cams", "--explain", "gradcam"],
                               tmp_path)
    assert code == 0 and result["abnormal"] is abnormal
    overlay = cv2.imread(result["cam"])
    box_pixels = int(np.all(overlay == gradcam.BOX_COLOUR, axis=-1).sum())
    verdict = "ABNORMAL" if abnormal else "NORMAL"
    assert f": {verdict}" in result["cam_caption"] and f"threshold {threshold:.2f}" in result["cam_caption"]
    assert "router confidence" in result["cam_caption"] and result["heat_map"] == "gradcam"
    assert "Grad-CAM of the part model" in result["cam_caption"] and result["heat_map_note"].startswith("Grad-CAM: ")
    if abnormal:
        # An untrained test model may give no positive evidence (no box); when it has one, it is drawn.
        assert bool(result["boxes"]) == (box_pixels > 0)
    else:
        assert result["boxes"] == [] and box_pixels == 0
        # and the heat is faint: no pixel strays far from the radiograph's grey
        h, w = radiograph.shape
        body = overlay[overlay.shape[0] - h:, :w].astype(int)
        assert np.abs(body - radiograph[..., None].astype(int)).max() <= 0.25 * 255 + 1


@pytest.mark.parametrize("threshold,abnormal", [(1.0 - 1e-9, False), (1e-6, True)])
def test_the_locators_boxes_are_drawn_whatever_the_decision_and_a_normal_call_says_so(full_run, radiograph, tmp_path,
                                                                                      threshold, abnormal, monkeypatch):
    """The locator's map and boxes, in the image's pixels, are what `fracture_map` gives, whether the image
    was called normal or abnormal; a normal call with a box says so."""
    from bonenet.inference import heatmap
    from bonenet.scoring.detection import map_boxes

    h, w = radiograph.shape
    peak = np.zeros((h, w), np.float32)
    peak[h // 3:h // 3 + 12, w // 2:w // 2 + 20] = 0.9  # a locator that finds one region
    monkeypatch.setattr(heatmap, "fracture_map", lambda gray, locator=None: (peak, map_boxes(peak, 0.5)))
    run_dir, image = _run_at_threshold(full_run, threshold, radiograph, tmp_path)
    code, (result,) = _predict([image, "--models-dir", run_dir, "--cam-dir", tmp_path / "cams"], tmp_path)
    assert code == 0 and result["abnormal"] is abnormal and result["heat_map"] == "locator"
    assert result["boxes"] == [{"box": [w // 2, h // 3, w // 2 + 20, h // 3 + 12], "score": pytest.approx(0.9)}]
    overlay = cv2.imread(result["cam"])
    assert int(np.all(overlay == gradcam.BOX_COLOUR, axis=-1).sum()) > 0
    assert ("although the image was called normal" in result["cam_caption"]) is not abnormal
    assert "fracture locator" in result["heat_map_note"]


def test_overlay_draws_the_boxes_it_is_given_and_keeps_cold_film_plain(radiograph):
    h, w = radiograph.shape
    cam = np.zeros((h, w), np.float32)
    cam[h // 4:h // 2, w // 4:w // 2] = 1.0
    box = gradcam.cam_box(cam)
    lines = gradcam.caption("hand", 0.97, 0.8, 0.5, True)
    drawn = gradcam.overlay(radiograph, cam, True, [box], lines)
    faint = gradcam.overlay(radiograph, cam, False, [], gradcam.caption("hand", 0.97, 0.2, 0.5, False))
    assert drawn.shape[0] > h and drawn.shape[1] > w
    boxed = lambda image: int(np.all(image == gradcam.BOX_COLOUR, axis=-1).sum())  # noqa: E731
    assert boxed(drawn) > 0 and boxed(faint) == 0
    body = drawn[drawn.shape[0] - h:, :w].astype(int)
    cold = cam == 0
    cold[h // 4 - 5:h // 2 + 5, w // 4 - 5:w // 2 + 5] = False  # the box's lines
    assert np.array_equal(body[cold], np.repeat(radiograph[cold][:, None], 3, axis=1))  # cold film untouched
    hot = faint[faint.shape[0] - h:, :w].astype(int)[h // 4 + 5, w // 4 + 5]
    assert np.abs(hot - int(radiograph[h // 4 + 5, w // 4 + 5])).max() <= 0.25 * 255 + 1


@pytest.mark.corpus("R8")
def test_a_flat_folder_of_mixed_parts_is_flagged_and_per_image_scores_each_alone(full_run, index, tmp_path,
                                                                                  monkeypatch, capsys):
    """A folder of unrelated images is one study by the grouping rule, but never silently: when the
    images' own router votes disagree, the study says so (JSON, CSV, console)."""
    from bonenet.inference.predictor import BoneNet
    from bonenet.parts import PARTS

    flat = tmp_path / "flat"
    flat.mkdir()
    valid = index.images[index.images.split == "valid"]
    chosen = [valid[valid.part == part].path.iloc[0] for part in ("XR_HAND", "XR_WRIST", "XR_WRIST")]
    for i, path in enumerate(chosen):
        shutil.copy(path, flat / f"image{i}.png")

    def router_probs(self, features):  # a router that recognises each image's true part
        truth = ["XR_HAND", "XR_WRIST", "XR_WRIST"][:len(features)]
        return np.eye(len(PARTS))[[PARTS.index(p) for p in truth]] * 0.9 + 0.1 / len(PARTS)

    monkeypatch.setattr(BoneNet, "router_probs", router_probs)
    code, results = _predict([flat, "--models-dir", full_run, "--csv", tmp_path / "out.csv"], tmp_path)
    assert code == 0
    study = results[-1]
    assert study["study"] == str(flat) and study["part"] == "XR_WRIST"
    assert study["mixed_parts"] == {"XR_HAND": 1, "XR_WRIST": 2}
    assert [r["image_part"] for r in results[:-1]] == ["XR_HAND", "XR_WRIST", "XR_WRIST"]
    out = capsys.readouterr().out
    assert f"study {flat}: warning: its images disagree about the part (XR_HAND×1 XR_WRIST×2)" in out
    table = pd.read_csv(tmp_path / "out.csv")
    assert table["mixed_parts"].tolist()[-1] == "XR_HAND×1 XR_WRIST×2"
    # --per-image: no study, each image scored alone.
    code, alone = _predict([flat, "--models-dir", full_run, "--per-image"], tmp_path, "alone")
    assert code == 0 and len(alone) == 3 and not any("study" in r for r in alone)
    assert [r["part"] for r in alone] == ["XR_HAND", "XR_HAND", "XR_HAND"]  # the fake router's first row each time


@pytest.mark.corpus("T4")
def test_predict_skips_a_folder_named_like_an_image_and_keeps_the_good_ones(full_run, index, tmp_path, capsys):
    study = tmp_path / "study1"
    (study / "scan.png").mkdir(parents=True)  # a folder with an image's name
    good = study / "image1.png"
    cv2.imwrite(str(good), cv2.imread(index.images.path.iloc[0], cv2.IMREAD_GRAYSCALE))
    out = tmp_path / "p.json"
    code, _ = run_cli(["predict", study, "--models-dir", full_run, "--json", out], capsys)
    results = json.loads(out.read_text())
    assert code == 0 and [r.get("study", r.get("path")) for r in results] == [str(good), str(study), str(study / "scan.png")]
    assert results[-1]["skipped"] == "empty folder"  # listed, not silent


def _variants(radiograph, folder):
    """One file per image case, named by its case; returns {case: path}."""
    folder.mkdir()
    good = cv2.imencode(".png", radiograph)[1].tobytes()
    files = {
        "H01": bytes(good[:60]) + bytes(len(good) - 80) + bytes(good[-20:]),  # body zeroed, ends intact
        "H02": b"",
        "H03": good[: len(good) // 3],
        "H04": b"this is not a png",
        "H05": good,  # a macOS resource fork named ._*.png
        "H06": good,
        "H07": cv2.imencode(".png", radiograph.astype(np.uint16) * 257)[1].tobytes(),
        "H08": cv2.imencode(".png", cv2.cvtColor(radiograph, cv2.COLOR_GRAY2BGR))[1].tobytes(),
        "H09": cv2.imencode(".png", cv2.cvtColor(radiograph, cv2.COLOR_GRAY2BGRA))[1].tobytes(),
    }
    paths = {}
    for case, data in files.items():
        paths[case] = folder / (f"._{case}.png" if case == "H05" else f"{case}.png")
        paths[case].write_bytes(data)
    return paths


@pytest.fixture(scope="module")
def first_radiograph(index):
    """The index's first image, as the bad-input variants are made from it."""
    return cv2.imread(index.images.path.iloc[0], cv2.IMREAD_GRAYSCALE)


@pytest.fixture(scope="module")
def predicted_variants(full_run, first_radiograph, tmp_path_factory):
    folder = tmp_path_factory.mktemp("variants")
    paths = _variants(first_radiograph, folder / "study")
    out = folder / "p.json"
    code = run_pipeline.main(["predict", *map(str, paths.values()), "--models-dir", str(full_run), "--json", str(out)])
    return code, paths, {r["path"]: r for r in json.loads(out.read_text())}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.corpus(c)) for c in ("H01", "H02", "H03", "H04",
                                                                                        "H05")])
def test_a_broken_or_foreign_file_is_an_error_entry_naming_it(predicted_variants, case):
    code, paths, results = predicted_variants
    entry = results[str(paths[case])]
    assert code == 1 and entry["error"].startswith(f"{paths[case]}: ") and "p_abnormal" not in entry


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.corpus(c, "H06")) for c in ("H07", "H08", "H09")])
def test_16_bit_rgb_and_rgba_give_the_8_bit_grayscale_answer(predicted_variants, case):
    _, paths, results = predicted_variants
    base, other = results[str(paths["H06"])], results[str(paths[case])]
    assert "error" not in base and "error" not in other
    assert other["part"] == base["part"] and other["p_abnormal"] == pytest.approx(base["p_abnormal"], abs=1e-6)


@pytest.mark.corpus("T4")
def test_an_unreadable_image_among_good_ones_is_an_error_entry(full_run, first_radiograph, shared_tmp):
    run = shutil.copytree(full_run, shared_tmp / "run", ignore=shutil.ignore_patterns("checkpoints", "cache"))
    study = shared_tmp / "study"
    study.mkdir()
    cv2.imwrite(str(study / "image1.png"), first_radiograph)
    cv2.imwrite(str(study / "image2.png"), first_radiograph)
    (study / "image2.png").chmod(0)
    for path in [run, *run.rglob("*"), study, study / "image1.png"]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    proc = as_nobody(["predict", study / "image1.png", study / "image2.png", "--models-dir", run, "--json",
                       shared_tmp / "p.json"], shared_tmp)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    results = json.loads((shared_tmp / "p.json").read_text())
    assert [r["path"] for r in results] == [str(study / "image1.png"), str(study / "image2.png")]
    assert "p_abnormal" in results[0] and results[1]["error"] == f"{study / 'image2.png'}: cannot be read " \
                                                                 "(Permission denied)"


@pytest.mark.corpus("R6")
def test_a_path_too_long_for_the_file_system_fails_alone(full_run, index, tmp_path, capsys):
    good = index.images[index.images.split == "valid"].path.iloc[0]
    too_long = tmp_path / ("x" * 300 + ".png")
    code, results = 1, None
    out = tmp_path / "p.json"
    code = run_pipeline.main(["predict", str(too_long), good, "--models-dir", str(full_run), "--json", str(out)])
    results = json.loads(out.read_text())
    assert code == 1 and results[0]["path"] == str(too_long) and "File name too long" in results[0]["error"]
    assert "p_abnormal" in results[1]  # the good image beside it is still scored


def _predict_peak_mb(folder, run, out):
    """The peak resident memory (MB) of `bonenet predict FOLDER` in a process of its own."""
    import resource

    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", code, sys.executable, "run_pipeline.py", "predict", str(folder),
                           "--models-dir", str(run), "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert resource  # the child's own ru_maxrss is read in the wrapper
    return int(proc.stdout.strip().splitlines()[-1]) / 1024


@pytest.mark.slow  # writes 5,500 radiographs and predicts them: about three minutes
@pytest.mark.corpus("R9")
def test_predict_streams_a_big_folder_so_its_memory_does_not_grow_with_it(full_run, index, tmp_path):
    gray = cv2.resize(cv2.imread(index.images.path.iloc[0], cv2.IMREAD_GRAYSCALE), (512, 512))
    ok, png = cv2.imencode(".png", gray)
    peaks = {}
    for n in (500, 5000):
        folder = tmp_path / f"flat{n}"
        folder.mkdir()
        for i in range(n):
            (folder / f"image{i:05d}.png").write_bytes(png.tobytes())
        peaks[n] = _predict_peak_mb(folder, full_run, tmp_path / f"p{n}.json")
        results = json.loads((tmp_path / f"p{n}.json").read_text())
        assert len(results) == n + 1 and results[-1]["study"] == str(folder)
    print(f"predict peak memory: {peaks[500]:.0f} MB for 500 images, {peaks[5000]:.0f} MB for 5,000")
    assert peaks[5000] <= 1.5 * peaks[500], peaks


@pytest.mark.corpus("R10")
def test_a_heat_map_killed_mid_write_leaves_the_earlier_one_whole(tmp_path, monkeypatch):
    from bonenet.inference.inputs import cam_file_writer

    write = cam_file_writer(tmp_path / "cams")
    first = write("/data/p1/study1/image1.png", np.full((40, 60, 3), 50, np.uint8))["cam"]
    before = Path(first).read_bytes()
    original = Path.write_bytes

    def killed(self, data):
        original(self, data[: len(data) // 2])  # half the PNG is on disk when the kill comes
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", killed)
    with pytest.raises(KeyboardInterrupt):
        write("/data/p1/study1/image1.png", np.full((40, 60, 3), 200, np.uint8))
    assert Path(first).read_bytes() == before  # the earlier heat map, whole
    assert [p.name for p in (tmp_path / "cams").iterdir()] == [Path(first).name]  # no half-written temporary


def test_the_one_read_and_prepare_path_keeps_order_names_failures_and_keeps_only_what_it_is_asked(net, wrist_study,
                                                                                                  monkeypatch):
    from bonenet.inference import inputs

    monkeypatch.setattr(inputs, "PREDICT_BATCH", 2)  # three batches from five inputs
    good = [(path, path) for path in wrist_study[:2]]
    images = [good[0], ("upload.png", b"not an image"), good[1], ("empty.dcm", b""), good[0]]
    batches = list(inputs.prepared_batches(net, images, keep=2))
    assert [b.kept for b in batches] == [[0], [2], [4]]
    assert sorted(i for b in batches for i in b.skips) == [1, 3]
    assert batches[0].skips[1].path == "upload.png" and batches[0].skips[1].stage == "read"
    assert [i for b in batches for i in b.inputs] == [0, 2]  # the first two read, no more
    gray, prepared = batches[0].inputs[0]
    np.testing.assert_array_equal(prepared, net.prepare(wrist_study[0]))
    np.testing.assert_array_equal(batches[0].prepared[0], batches[2].prepared[0])  # the same file, the same input
    np.testing.assert_array_equal(gray, load_gray(wrist_study[0]))


def test_the_next_batch_is_read_while_the_caller_works_on_this_one_and_no_further(net, monkeypatch):
    import time

    from bonenet.inference import inputs

    monkeypatch.setattr(inputs, "PREDICT_BATCH", 2)
    read = []
    monkeypatch.setattr(inputs, "_read_and_prepare", lambda _net, name, source: read.append(name) or (source, source))
    images = [(f"i{k}", np.zeros((2, 2), np.uint8)) for k in range(7)]
    batches = inputs.prepared_batches(net, images)
    first = next(batches)
    deadline = time.time() + 10
    while len(read) < 4 and time.time() < deadline:  # the pool's threads run on their own
        time.sleep(0.01)
    assert first.kept == [0, 1] and sorted(read) == ["i0", "i1", "i2", "i3"]  # batch two, not three
    assert [b.kept for b in batches] == [[2, 3], [4, 5], [6]] and len(read) == 7
