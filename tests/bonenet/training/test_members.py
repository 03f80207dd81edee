"""Ensembles' members (`bonenet.training.members`): trained on one trunk, listed, checked at load and scored as the
mean of their probabilities."""

import pytest

from bonenet.configs import TrainConfig
from bonenet.run import store
from bonenet.run.manifest import read_manifest
from bonenet.training import members
from bonenet.training.train import train_model


def test_member_zero_is_the_model_trained_before_ensembles():
    assert members.member_seed(5, 0) == 5 and len({members.member_seed(5, m) for m in range(5)}) == 5


def test_a_cached_ensemble_trains_its_members_on_the_runs_trunk_and_lists_them(ensemble_run, run):
    run_dir, entry = ensemble_run
    members = entry.members
    assert [m["file"] for m in members] == ["heads/wrist.keras", "heads/wrist.m2.keras", "heads/wrist.m3.keras"]
    assert [m["seed"] for m in members] == [0, 7919, 15838] and len({m["sha256_weights"] for m in members}) == 3
    assert all((run_dir / m["file"]).is_file() and {"loss", "auc"} <= set(m["holdout"]) for m in members)
    assert read_manifest(run_dir).models["XR_WRIST"].members == members
    assert entry.config["ensemble"] == 3 and entry.file == members[0]["file"]
    # One trunk for every member: the run's, unchanged, and its feature cache read, not computed again.
    assert (run_dir / "trunk.keras").read_bytes() == (run[0] / "trunk.keras").read_bytes()
    assert len(list((run_dir / "cache").glob("features-*"))) == len(list((run[0] / "cache").glob("features-*")))
    assert not any((run_dir / "checkpoints").glob("*/backup"))


@pytest.mark.slow  # three whole networks: about a minute
def test_a_full_mode_ensemble_trains_whole_networks(index, tmp_path):
    config = TrainConfig(epochs=1, batch_size=16, image_size=32, weights="none", trainable_layers=234, ensemble=3)
    entry, _ = train_model("wrist", index, tmp_path, config, verbose=0)
    assert entry.config["mode"] == "full" and len(entry.members) == 3
    _, trunk, heads = store.load_run_models(tmp_path)
    assert len(heads["XR_WRIST"]) == 3 and len(trunk.layers) <= 4  # the trunk is the input scaling alone
    assert all(h.count_params() > 3_000_000 for h in heads["XR_WRIST"])  # each member a whole EfficientNetB0
    assert len({m["sha256_weights"] for m in entry.members}) == 3


