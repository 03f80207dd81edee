"""The heat map every output draws (`bonenet.inference.heatmap`)."""

import numpy as np

from bonenet.data.decode import load_gray
from bonenet.inference.heatmap import GRADCAM_LABEL, fracture_map, heat_map, map_note, part_cam, shipped_locator
from bonenet.run.provenance import caveat
from bonenet.scoring.detection import map_boxes
from bonenet.scoring.localisation import heat_map_note


def _result(abnormal):
    return {"part_confidence": 0.9, "p_abnormal": 0.8 if abnormal else 0.1, "threshold": 0.5, "abnormal": abnormal}


def test_a_heat_map_reuses_the_prepared_image_and_draws_the_same_map(net, wrist_study):
    gray = load_gray(wrist_study[0])
    fresh, fresh_box = part_cam(net, "XR_WRIST", gray)
    reused, reused_box = part_cam(net, "XR_WRIST", gray, prepared=net.prepare(gray))
    np.testing.assert_array_equal(fresh, reused)
    assert fresh.shape == gray.shape and fresh_box == reused_box
    # Another image's prepared input gives another map: the argument is really used.
    other = net.prepare(np.ascontiguousarray(gray[::-1]))
    assert not np.array_equal(part_cam(net, "XR_WRIST", gray, prepared=other)[0], fresh)


def test_gradcam_boxes_only_an_abnormal_call_and_its_caption_carries_the_caveat_and_the_claim(net, wrist_study):
    gradcam = net.with_tta(net.tta, "gradcam")
    gray = load_gray(wrist_study[0])
    image, boxes, lines = heat_map(gradcam, "XR_WRIST", gray, _result(True), header=["HEADER"])
    assert image.shape[2] == 3 and lines[0] == "HEADER"
    assert [b["box"] for b in boxes] == [part_cam(net, "XR_WRIST", gray)[1]]
    assert heat_map_note(net.manifest, "XR_WRIST") in lines and caveat(net.manifest) in lines
    assert GRADCAM_LABEL in lines and map_note(gradcam, "XR_WRIST").startswith("Grad-CAM: ")
    assert any("abnormal" in line.lower() for line in lines[-2:])
    assert heat_map(gradcam, "XR_WRIST", gray, _result(False))[1] == []


def test_the_locator_draws_the_same_map_and_boxes_whatever_the_run(net, wrist_study):
    """The locator's map is the run's default heat map, and it does not depend on the run's part model or
    decision: the same image gets the same boxes called abnormal or normal."""
    gray = load_gray(wrist_study[0])
    prob, boxes = fracture_map(gray)
    assert prob.shape == gray.shape and 0 <= prob.min() and prob.max() <= 1
    assert boxes == map_boxes(prob, shipped_locator().threshold)
    image, abnormal_boxes, lines = heat_map(net, "XR_WRIST", gray, _result(True))
    _, normal_boxes, _ = heat_map(net, "XR_WRIST", gray, _result(False))
    assert abnormal_boxes == normal_boxes == boxes
    assert shipped_locator().note() in lines and map_note(net, "XR_WRIST") == shipped_locator().note()
