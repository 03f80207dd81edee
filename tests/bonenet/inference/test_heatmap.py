"""The heat map every output draws (`bonenet.inference.heatmap`)."""

import numpy as np

from bonenet.data.decode import load_gray
from bonenet.inference.heatmap import heat_map, part_cam
from bonenet.run.provenance import caveat
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


def test_only_an_abnormal_call_gets_a_box_and_the_caption_carries_the_caveat_and_the_claim(net, wrist_study):
    gray = load_gray(wrist_study[0])
    image, box, lines = heat_map(net, "XR_WRIST", gray, _result(True), header=["HEADER"])
    assert image.shape == (*gray.shape[:2], 3) or image.shape[2] == 3
    assert box is not None and lines[0] == "HEADER"
    assert heat_map_note(net.manifest, "XR_WRIST") in lines and caveat(net.manifest) in lines
    assert any("abnormal" in line.lower() for line in lines[-2:])
    _, normal_box, _ = heat_map(net, "XR_WRIST", gray, _result(False))
    assert normal_box is None
