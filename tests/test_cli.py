"""The command line a newcomer meets: --version, fast refusals of typos, the preprocess panel."""

import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import run_pipeline
from bonenet import __version__
from bonenet.figures import image_title, preprocess_panel

REPO = Path(__file__).resolve().parents[1]


def _cli(*args):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "run_pipeline.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    return proc, time.perf_counter() - start


def test_version_and_the_workflow_in_the_help():
    proc, _ = _cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"bonenet {__version__}"
    proc, _ = _cli("--help")
    assert "not for clinical use" in proc.stdout.lower()
    assert all(f"  {i}. " in proc.stdout for i in range(1, 6))


@pytest.mark.parametrize("args,names", [(["train-part", "--part", "wirst"], "elbow, finger, forearm"),
                                        (["train-all", "--recipe", "equalise"], "none, equalize, sharpen")])
def test_a_misspelt_part_or_recipe_fails_before_tensorflow_loads(args, names):
    proc, seconds = _cli(*args, "--data-root", "x", "--models-dir", "y")
    assert proc.returncode == 2 and names in proc.stderr and "Traceback" not in proc.stderr
    assert "tensorflow" not in proc.stderr.lower()
    # Parsing fails before any heavy import; the 2 s budget is the issue's, with room for a slow machine.
    assert seconds < 10, seconds


@pytest.mark.parametrize("args,accepted", [
    (["train-all", "--trainable-layers", "300"], "within [0, 234]"),
    (["train-router", "--image-size", "16"], "at least 32"),
    (["train-part", "--part", "hand", "--learning-rate", "0"], "above 0"),
    (["train-all", "--holdout-fraction", "1"], "within (0, 1)"),
    (["serve", "--port", "70000"], "within [1, 65535]"),
    (["serve", "--port", "-1"], "within [1, 65535]"),
    (["evaluate", "--out", "z", "--bootstrap", "-5"], "at least 0"),
    (["pretrain-backbone", "--out", "b.weights.h5", "--epochs", "0"], "at least 1"),
    (["demo", "--image-size", "8"], "at least 32"),
])
def test_out_of_range_values_are_refused_while_parsing_with_the_range(args, accepted):
    if args[0] in ("train-all", "train-router", "train-part", "evaluate"):
        args = [*args, "--data-root", "x"]
    if args[0] not in ("pretrain-backbone", "demo"):
        args = [*args, "--models-dir", "y"]
    proc, seconds = _cli(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "out of range: must be " + accepted in last, last
    assert seconds < 10, seconds  # refused before any data is read or TensorFlow loads


def test_a_too_small_image_is_named_in_the_message(tmp_path):
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.zeros((1, 1), np.uint8))
    proc, _ = _cli("preprocess", str(tiny), "--out", str(tmp_path / "panel.png"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"bonenet preprocess: error: {tiny}: image is too small (1×1); need at least 8×8"


def test_image_title_names_part_patient_study_and_image():
    path = "/data/MURA-v1.1/valid/XR_HAND/patient11185/study1_positive/image3.png"
    assert image_title(path) == "hand · patient11185 · study1 (positive) · image3"
    assert image_title("/somewhere/scan.dcm") == "scan.dcm"


def _panel_titles(fig):
    return [ax.get_title() for ax in fig.axes if ax.images]


def test_the_panel_shows_the_roi_box_and_only_the_recipes_steps():
    image = np.zeros((300, 240), np.uint8)
    image[40:260, 50:200] = 170  # the anatomy, inside a dark film
    default = _panel_titles(preprocess_panel(image, "equalize", 64))
    assert default[0].startswith("Original: ROI box") and default[-1].startswith("Model input 'equalize'")
    assert len(default) == 3 and "ch 1, 2, 3: clahe" in default[1]  # one chain shown once, not three tiles
    fig = preprocess_panel(image, "equalize", 64)
    (box,) = fig.axes[0].patches
    assert (box.get_x() + 0.5, box.get_y() + 0.5) == pytest.approx((50, 40), abs=3)
    everything = _panel_titles(preprocess_panel(image, "equalize", 64, all_filters=True))
    assert {"Sobel", "Prewitt", "Roberts", "Canny", "CLAHE"} <= set(everything)


def test_preprocess_cli_reads_dicom_and_titles_the_figure(tmp_path, write_dicom):
    image = np.zeros((200, 160), np.uint8)
    image[30:170, 40:120] = 150
    study = tmp_path / "XR_WRIST" / "patient00001" / "study1_negative"
    study.mkdir(parents=True)
    source = write_dicom(study / "image1.dcm", image)
    out = tmp_path / "panel.png"
    assert run_pipeline.main(["preprocess", str(source), "--out", str(out), "--image-size", "64"]) == 0
    assert cv2.imread(str(out)) is not None
