"""The trunk adaptation of a run: trained on the fit images only, then the run's frozen backbone, reused by its
later models, refused when made otherwise, and worded in the run's caveat."""

import json
import shutil

import numpy as np
import pytest

from bonenet.configs import TrainConfig
from bonenet.models.backbones import provenance_path

CONFIG = dict(epochs=1, batch_size=16, image_size=64, weights="none", seed=0)


@pytest.fixture(scope="module")
def adapted_run(index, tmp_path_factory):
    """A run whose trunk was adapted for one epoch, with its router trained on it."""
    from bonenet.training.train import train_model

    run_dir = tmp_path_factory.mktemp("adapted") / "run"
    entry, model = train_model("router", index, run_dir, TrainConfig(adapt_epochs=1, **CONFIG), verbose=0)
    return run_dir, entry, model


def test_the_adapted_trunk_learns_from_the_fit_images_only_and_becomes_the_runs_backbone(adapted_run, index):
    from bonenet.data.mura import holdout_split
    from bonenet.digests import file_stamps
    from bonenet.run.manifest import read_manifest
    from bonenet.training.adapt import ADAPTED

    run_dir, entry, model = adapted_run
    trunk_file = run_dir / ADAPTED
    provenance = json.loads(provenance_path(trunk_file).read_text())
    split = holdout_split(index.studies, TrainConfig().holdout_fraction, 0)
    held = set(split.loc[split.holdout, "study"])
    train = index.images[index.images.split == "train"]
    fit = train[~train.study.isin(held)]
    assert provenance["fit_images"] == len(fit) and provenance["monitor_images"] == len(train) - len(fit)
    assert provenance["adaptation"]["images"] == file_stamps(fit["path"])  # no hold-out or valid image
    assert set(provenance["monitor_auroc"]) == {*sorted(fit["part"].unique()), "abnormal"}
    manifest = read_manifest(run_dir)
    assert manifest.weights["sha256"] == provenance["sha256"]
    assert manifest.weights["kind"] == "radiograph"  # it has seen real (here synthetic) radiographs, not ImageNet
    assert "adapted by bonenet on" in manifest.weights["summary"]
    assert not (run_dir / "adapt-backup").exists()
    # The trunk the router trained on is the adapted one, not the random start.
    from bonenet.models.efficientnet import build_base

    base = build_base(64, weights=str(trunk_file))
    fresh = build_base(64, weights=None)
    layer = "block2a_expand_conv"
    assert not np.allclose(base.get_layer(layer).get_weights()[0], fresh.get_layer(layer).get_weights()[0])
    assert np.allclose(model.get_layer(layer).get_weights()[0], base.get_layer(layer).get_weights()[0], atol=1e-3)


def test_a_later_model_reuses_the_adapted_trunk_and_other_settings_are_refused(adapted_run, index, tmp_path):
    from bonenet.training.adapt import ADAPTED
    from bonenet.training.job import prepare_job

    run_dir = tmp_path / "run"
    shutil.copytree(adapted_run[0], run_dir, ignore=shutil.ignore_patterns("cache", "checkpoints"))
    before = (run_dir / ADAPTED).stat().st_mtime_ns
    job = prepare_job("wrist", index, run_dir, TrainConfig(adapt_epochs=1, **CONFIG))
    assert job.place.weights == str(run_dir / ADAPTED) and (run_dir / ADAPTED).stat().st_mtime_ns == before
    with pytest.raises(ValueError, match=f"{ADAPTED}: this run's trunk was adapted with other adapt_epochs"):
        prepare_job("wrist", index, run_dir, TrainConfig(adapt_epochs=2, **CONFIG))
    with pytest.raises(ValueError, match="adapted with other adapt_early_size; use a new --models-dir"):
        prepare_job("wrist", index, run_dir, TrainConfig(adapt_epochs=1, adapt_early_size=32, **CONFIG))


def test_progressive_resizing_adapts_small_first_and_is_one_of_the_trunks_settings(index, tmp_path):
    from bonenet.training.adapt import ADAPTED
    from bonenet.training.job import prepare_job

    job = prepare_job("router", index, tmp_path, TrainConfig(adapt_epochs=2, adapt_early_size=32, **CONFIG))
    provenance = json.loads(provenance_path(tmp_path / ADAPTED).read_text())
    assert job.place.weights == str(tmp_path / ADAPTED) and provenance["adaptation"]["adapt_early_size"] == 32
    assert "the first 1 of 2 epochs at 32 px (scaled down from 64)" in provenance["schedule"]
    assert provenance["steps"] > 0 and not (tmp_path / "adapt-backup").exists()
    with pytest.raises(ValueError, match="adapted with other adapt_early_size"):
        prepare_job("router", index, tmp_path, TrainConfig(adapt_epochs=2, **CONFIG))


def test_an_interrupted_adaptation_needs_resume(index, tmp_path):
    from bonenet.training.job import prepare_job

    (tmp_path / "adapt-backup").mkdir()
    with pytest.raises(ValueError, match="adapt-backup: an interrupted trunk adaptation is there; pass --resume"):
        prepare_job("router", index, tmp_path, TrainConfig(adapt_epochs=1, **CONFIG))


def test_a_trunk_adapted_from_imagenet_stays_an_imagenet_backbone():
    from bonenet.training.adapt import _described

    imagenet = _described({"kind": "imagenet", "description": "Keras ImageNet weights"}, 1200)
    assert imagenet["kind"] == "imagenet" and "summary" not in imagenet
    synthetic = _described({"kind": "file", "description": "synthetic radiographs"}, 1200)
    assert synthetic["summary"].startswith("from synthetic radiographs, not ImageNet; then adapted by bonenet on 1,200")


@pytest.mark.slow  # an adaptation killed after its first epoch, refused without --resume, then resumed: about a minute
def test_a_killed_adaptation_resumes_from_its_last_epoch(synthetic_root, tmp_path):
    import subprocess
    import sys

    from conftest import REPO, kill_cli_when

    from bonenet.training.adapt import ADAPTED, BACKUP

    run_dir, backup = tmp_path / "run", tmp_path / "run" / BACKUP
    args = ["train-router", "--data-root", synthetic_root, "--models-dir", run_dir, "--weights", "none",
            "--image-size", "64", "--epochs", "1", "--batch-size", "8", "--adapt-epochs", "3",
            "--adapt-early-size", "32"]

    def epoch_recorded():
        try:
            return "epoch" in json.loads((backup / "training_metadata.json").read_text())
        except (OSError, ValueError):
            return False

    kill_cli_when(args, epoch_recorded)
    epoch = json.loads((backup / "training_metadata.json").read_text())["epoch"]
    assert not (run_dir / ADAPTED).exists() and 1 <= epoch < 3  # killed mid-adaptation: nothing written
    cli = [sys.executable, "run_pipeline.py", *map(str, args)]
    refused = subprocess.run(cli, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "pass --resume to continue it" in refused.stderr
    resumed = subprocess.run([*cli, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    shown = resumed.stdout + resumed.stderr
    assert f"Epoch {epoch + 1}/3" in shown and "Epoch 1/3" not in shown  # it went on from the killed epoch
    assert (run_dir / ADAPTED).is_file() and not backup.exists()
    assert json.loads(provenance_path(run_dir / ADAPTED).read_text())["steps"] > 0

