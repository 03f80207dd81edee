import json
from pathlib import Path

import cv2

from benchmarks import roi_check

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fracatlas"


def test_the_roi_cuts_no_anatomy_and_no_fracture_on_real_radiographs(tmp_path):
    """The real-image check of the ROI, on the committed FracAtlas fixtures (the README's figure comes
    from all 4,024 images)."""
    roi_check.main(["--fracatlas", str(FIXTURES), "--out", str(tmp_path / "roi.json"),
                    "--sheet", str(tmp_path / "sheet.png"), "--sheet-images", "20"])
    result = json.loads((tmp_path / "roi.json").read_text())
    assert result["images"] == 40 and result["fracture_boxes"] == 24
    assert result["images_cut"] == 0 and result["fracture_boxes_cut"] == 0
    assert result["mean_area_kept"] < 1.0  # it still crops something
    assert cv2.imread(str(tmp_path / "sheet.png")).shape[:2] == (2 * 192, 10 * 192)


def test_the_criterion_sees_a_cut():
    import numpy as np

    mask = np.zeros((100, 100), bool)
    mask[10:90, 10:90] = True
    assert roi_check.share_outside(mask, (0, 100, 0, 100)) == 0
    assert roi_check.share_outside(mask, (0, 100, 0, 50)) == 0.5
    assert roi_check.box_inside((20, 20, 10, 10), (0, 100, 0, 100))
    assert not roi_check.box_inside((20, 20, 10, 10), (0, 100, 0, 25))
