"""The pointing game (`bonenet.scoring.localisation`): hand-made boxes and maps scored exactly, and what a run may claim."""


import numpy as np
import pytest

from bonenet.inference.heatmap import heat_map
from bonenet.run.manifest import read_manifest, record_section
from bonenet.scoring import localisation


def test_box_mask_covers_exactly_the_boxes():
    mask = localisation.box_mask([(2, 3, 4, 5), (4, 4, 1, 1)], (20, 10))
    assert mask.sum() == 20 and mask[3:8, 2:6].all()


def test_a_hand_made_map_and_box_are_scored_exactly():
    box = [(40, 20, 10, 10)]  # x 40-49, y 20-29 on a 100 × 200 image
    cam = np.zeros((100, 200), np.float32)
    cam[25, 45] = 1.0  # the maximum inside the box
    cam[80, 150] = 0.5  # a third of the energy outside it
    terms = localisation.image_pointing(cam, box, tolerance=0)
    assert terms == {"hit": 1.0, "random": 100 / 20000, "centre": 0.0, "energy": pytest.approx(1 / 1.5)}

    cam[25, 45] = 0.0
    cam[24, 62] = 1.0  # 13 px right of the box: a hit within 15 px, a miss without tolerance
    assert localisation.image_pointing(cam, box, tolerance=0)["hit"] == 0.0
    within = localisation.image_pointing(cam, box, tolerance=15)
    assert within["hit"] == 1.0 and within["energy"] == 0.0
    near = localisation.near_boxes(box, cam.shape, 15)
    assert near[24, 64] and not near[24, 65] and within["random"] == near.mean()  # 15 px, Euclidean

    assert localisation.image_pointing(np.zeros((100, 200)), box)["hit"] == 0.0  # a blank map points nowhere
    centred = localisation.image_pointing(cam, [(95, 45, 10, 10)], tolerance=0)
    assert centred["centre"] == 1.0  # the image's centre (row 50, column 100) lies in that box


def test_the_game_has_intervals_and_beats_chance_only_above_the_random_rate():
    rows = [{"hit": float(i % 2), "random": 0.1, "centre": 0.0, "energy": 0.2} for i in range(40)]
    game = localisation.pointing_game(rows, n_boot=200)
    assert game["images"] == 40 and game["hit"] == 0.5 and game["random"] == pytest.approx(0.1)
    lo, hi = game["hit_ci95"]
    assert lo < 0.5 < hi and lo > 0.1
    assert localisation.above_chance(game)
    assert not localisation.above_chance({**game, "random": 0.4})  # the interval reaches below the random rate
    assert not localisation.above_chance(None)


def test_captions_claim_localisation_only_where_it_was_measured_above_chance(net, tmp_path):
    import shutil

    shutil.copy(net.run_dir / "manifest.json", tmp_path / "manifest.json")  # the record needs the manifest alone
    assert localisation.heat_map_note(net.manifest, "XR_WRIST") == localisation.NOT_VALIDATED
    rows = [{"hit": float(i % 2), "random": 0.1, "centre": 0.2, "energy": 0.2} for i in range(40)]
    record = localisation.pointing_record(localisation.pointing_game(rows, 200), "FracAtlas hold-out")
    record_section(tmp_path, "localisation", "XR_WRIST", record)
    manifest = read_manifest(tmp_path)
    assert manifest.localisation["XR_WRIST"]["tolerance_px"] == localisation.TOLERANCE_PX
    note = localisation.heat_map_note(manifest, "XR_WRIST")
    assert note == ("heat map points at the annotated fracture in 50% of FracAtlas hold-out cases (40 images; a random "
                    "point 10%, the image's centre 20%)")

    from bonenet.inference.predictor import BoneNet

    measured = BoneNet(manifest, net.members, net.trunk).with_tta("none", "gradcam")  # the note is Grad-CAM's
    gray = np.full((80, 80), 90, np.uint8)
    result = {"part_confidence": 0.9, "p_abnormal": 0.7, "threshold": 0.5, "abnormal": True}
    assert note in heat_map(measured, net.parts[0], gray, result)[2]
    assert localisation.NOT_VALIDATED in heat_map(net.with_tta(net.tta, "gradcam"), net.parts[0], gray, result)[2]
