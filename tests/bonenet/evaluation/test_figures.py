"""The preprocess panel (`bonenet.evaluation.figures`): the ROI box, the recipe's own steps, and its title."""

import cv2
import numpy as np
import pytest

import run_pipeline
from bonenet.evaluation.figures import image_title, preprocess_panel


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


def test_preprocess_cli_reads_dicom_and_titles_the_figure(tmp_path, write_dicom, monkeypatch):
    import bonenet.evaluation.figures

    titles, save = [], bonenet.evaluation.figures.save_figure
    monkeypatch.setattr(bonenet.evaluation.figures, "save_figure",
                        lambda fig, path, **kw: titles.append(fig._suptitle.get_text()) or save(fig, path, **kw))
    image = np.zeros((200, 160), np.uint8)
    image[30:170, 40:120] = 150
    study = tmp_path / "XR_WRIST" / "patient00001" / "study1_negative"
    study.mkdir(parents=True)
    source = write_dicom(study / "image1.dcm", image)
    out = tmp_path / "panel.png"
    assert run_pipeline.main(["preprocess", str(source), "--out", str(out), "--image-size", "64"]) == 0
    assert titles == ["wrist · patient00001 · study1 (negative) · image1"]
    assert cv2.imread(str(out)).shape[0] > 64  # the panel, written
