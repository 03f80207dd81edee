"""Slow: the models learn on synthetic data (run with `pytest -m slow`; about 15 minutes on 2 CPU cores)."""

import pytest

from bonenet.mura import read_mura
from bonenet.pretrain import pretrain_backbone
from bonenet.synthetic import make_synthetic
from bonenet.train import TrainConfig, train_model


@pytest.mark.slow
def test_router_reaches_ninety_percent_hold_out_accuracy(tmp_path):
    index = read_mura(make_synthetic(tmp_path / "data", studies_per_part=60, seed=0, progress=False))
    backbone = pretrain_backbone(index, tmp_path / "backbone.weights.h5", image_size=96, epochs=16,
                                 learning_rate=2e-3, verbose=0)
    config = TrainConfig(epochs=8, image_size=96, weights=str(backbone), learning_rate=1e-3)
    entry, _ = train_model("router", index, tmp_path / "run", config, verbose=0)
    assert entry["holdout"]["accuracy"] >= 0.9
