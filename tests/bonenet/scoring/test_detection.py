"""A fracture map scored as a detector (`bonenet.scoring.detection`)."""

import numpy as np
import pytest

from bonenet.scoring import detection


def test_map_boxes_gives_one_box_per_region_above_the_threshold_highest_first():
    prob = np.zeros((50, 60), np.float32)
    prob[5:10, 5:15] = 0.6
    prob[30:40, 40:45] = 0.9
    prob[20, 20] = 0.2  # below the threshold
    boxes = detection.map_boxes(prob, 0.5)
    assert [b["box"] for b in boxes] == [[40, 30, 45, 40], [5, 5, 15, 10]]
    assert [b["score"] for b in boxes] == pytest.approx([0.9, 0.6])
    assert detection.map_boxes(np.zeros((5, 5)), 0.5) == []


def test_a_fracture_is_found_once_and_a_second_box_on_it_is_false():
    truth = [[10, 10, 20, 20]]  # COCO x, y, w, h
    dets = [{"box": [12, 12, 28, 28], "score": 0.9}, {"box": [14, 14, 26, 26], "score": 0.8},
            {"box": [100, 100, 110, 110], "score": 0.7}]
    assert detection.match(dets, truth, "centre") == [(0.9, 1), (0.8, 0), (0.7, 0)]
    # IoU of [12, 12, 28, 28] with [10, 10, 30, 30] is 256 / 400: found at 0.5
    assert detection.match(dets, truth, "iou50")[0] == (0.9, 1)
    assert detection.match([{"box": [10, 10, 16, 16], "score": 1.0}], truth, "iou50") == [(1.0, 0)]


def test_froc_counts_false_boxes_per_image_scored():
    # Two images, two fractures; the ranking: hit (0.9), false (0.8), false (0.7), hit (0.6).
    matched = [[(0.9, 1), (0.7, 0)], [(0.8, 0), (0.6, 1)]]
    assert detection.froc_point(matched, 2, 0.5) == 0.5  # one false box allowed over two images
    assert detection.froc_point(matched, 2, 1) == 1.0  # two allowed: the last hit is reached
    assert detection.froc_point([[(0.9, 0)]], 1, 0) == 0.0


def test_average_precision_is_pascal_all_point():
    assert detection.average_precision([[(0.9, 1), (0.8, 1)]], 2) == pytest.approx(1.0)
    # hit, false, hit: precision 1 at recall 0.5, 2/3 at recall 1
    assert detection.average_precision([[(0.9, 1), (0.8, 0), (0.7, 1)]], 2) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert detection.average_precision([[]], 3) == 0.0


def test_detector_figures_carry_intervals_over_images():
    images = [([{"box": [10, 10, 20, 20], "score": 0.9}], [[10, 10, 10, 10]]),
              ([{"box": [50, 50, 60, 60], "score": 0.8}], []),
              ([], [[0, 0, 5, 5]])]
    out = detection.detector_figures(images, n_boot=200)
    assert out["images"] == 3 and out["fractures"] == 2
    assert out["sensitivity_at_1fp"] == 0.5 and out["ap50"] == pytest.approx(0.5)
    lo, hi = out["sensitivity_at_1fp_ci95"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    assert detection.detector_figures([], n_boot=10)["ap50"] is None
