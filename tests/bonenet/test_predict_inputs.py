"""`predict` on what clinicians hold: DICOM and JPEG as well as PNG, bad inputs as error entries,
and heat maps that do not dress up a normal image as a finding."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import run_pipeline
from bonenet import gradcam
from bonenet.imageio import load_gray


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


@pytest.mark.parametrize("threshold,abnormal", [(1.0 - 1e-9, False), (1e-6, True)])
def test_a_normal_heat_map_has_no_box_and_says_normal(full_run, radiograph, tmp_path, threshold, abnormal):
    run_dir = tmp_path / "run"
    shutil.copytree(full_run, run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for key, entry in manifest["models"].items():
        if key != "router":
            entry["tuning"] = {"threshold": threshold, "studies": 3}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), radiograph)
    code, (result,) = _predict([image, "--models-dir", run_dir, "--cam-dir", tmp_path / "cams"], tmp_path)
    assert code == 0 and result["abnormal"] is abnormal
    overlay = cv2.imread(result["cam"])
    box_pixels = int(np.all(overlay == gradcam.BOX_COLOUR, axis=-1).sum())
    verdict = "ABNORMAL" if abnormal else "NORMAL"
    assert f": {verdict}" in result["cam_caption"] and f"threshold {threshold:.2f}" in result["cam_caption"]
    assert "router confidence" in result["cam_caption"]
    if abnormal:
        # An untrained test model may give no positive evidence (no box); when it has one, it is drawn.
        assert (result["cam_box"] is not None) == (box_pixels > 0)
    else:
        assert result["cam_box"] is None and box_pixels == 0
        # and the heat is faint: no pixel strays far from the radiograph's grey
        h, w = radiograph.shape
        body = overlay[overlay.shape[0] - h:, :w].astype(int)
        assert np.abs(body - radiograph[..., None].astype(int)).max() <= 0.25 * 255 + 1


def test_overlay_draws_the_box_only_for_an_abnormal_image_and_keeps_cold_film_plain(radiograph):
    h, w = radiograph.shape
    cam = np.zeros((h, w), np.float32)
    cam[h // 4:h // 2, w // 4:w // 2] = 1.0
    box = gradcam.cam_box(cam)
    lines = gradcam.caption("hand", 0.97, 0.8, 0.5, True)
    drawn = gradcam.overlay(radiograph, cam, True, box, lines)
    faint = gradcam.overlay(radiograph, cam, False, box, gradcam.caption("hand", 0.97, 0.2, 0.5, False))
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
    from bonenet.inference import BoneNet
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
