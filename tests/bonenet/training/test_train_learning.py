"""Slow: with the shipped backbone, every part learns its findings, and Grad-CAM looks at them.

Run with `python -m pytest -m slow tests/bonenet/training/test_train_learning.py` (the demo's plan: about 8
minutes on 2 CPU cores).
"""

import cv2
import numpy as np
import pytest

from bonenet.configs import DemoPlan, EvaluateConfig
from bonenet.data.mura import read_mura
from bonenet.data.synthetic import draw_radiograph, synthetic_dataset
from bonenet.demo import train_config
from bonenet.evaluation.evaluate import evaluate_run
from bonenet.inference.heatmap import part_cam
from bonenet.inference.predictor import BoneNet
from bonenet.models.backbones import shipped_backbone
from bonenet.parts import PARTS
from bonenet.training.train import train_all

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's plan on the shipped backbone: every model trained, the valid split evaluated."""
    tmp, plan = tmp_path_factory.mktemp("learning"), DemoPlan()
    root = synthetic_dataset(tmp / "data", plan.studies_per_part, plan.seed, plan.valid_studies_per_part,
                             progress=False)
    backbone, _ = shipped_backbone()
    _, failures = train_all(read_mura(root), tmp / "run", train_config(plan, backbone), verbose=0)
    assert not failures
    return tmp / "run", evaluate_run(root, tmp / "run", tmp / "eval", EvaluateConfig(bootstrap=200, plots=False))


def test_the_router_and_every_part_learn(demo):
    _, metrics = demo
    assert metrics["router"]["study_accuracy"] >= 0.95
    auroc = {part: metrics["study"][part]["auroc"] for part in PARTS}
    assert all(value >= 0.75 for value in auroc.values()), auroc
    assert metrics["study"]["overall"]["kappa"] >= 0.6


def test_grad_cam_is_brighter_at_planted_findings_than_at_random_places(demo):
    """The heat map is brighter at the finding than at the same-shaped region placed at random.

    At 96 px the explained layer is a 3×3 grid, so the map's single brightest pixel is a cell
    centre and rarely falls on a thin finding; what the map can show is which cell holds it. The
    statistic is therefore the share of the image's pixels below the map's highest value inside
    the finding, against the same share for the finding's mask shifted to random places.
    """
    net = BoneNet.load(demo[0])
    rng = np.random.default_rng(0)
    at_finding, at_random = [], []
    for seed in range(40):
        kind = ("fracture", "hardware", "lesion")[seed % 3]
        abnormal = draw_radiograph("XR_HUMERUS", [(kind, 0)], np.random.default_rng(seed), size=400)
        normal = draw_radiograph("XR_HUMERUS", [], np.random.default_rng(seed), size=400)
        # Same seed, same pose: the finding is exactly where the two drawings differ.
        mask = cv2.dilate((np.abs(abnormal.astype(int) - normal.astype(int)) > 25).astype(np.uint8),
                          np.ones((15, 15), np.uint8)).astype(bool)
        cam, _ = part_cam(net, "XR_HUMERUS", abnormal)
        assert cam.max() > 0  # the map of a planted finding is never blank
        at_finding.append((cam < cam[mask].max()).mean())
        shifts = rng.integers(0, mask.shape, size=(20, 2))
        at_random.append(np.mean([(cam < cam[np.roll(mask, tuple(s), axis=(0, 1))].max()).mean() for s in shifts]))
    assert np.mean(at_finding) > np.mean(at_random) + 0.1, (np.mean(at_finding), np.mean(at_random))
    assert np.mean(np.greater(at_finding, at_random)) > 0.6
