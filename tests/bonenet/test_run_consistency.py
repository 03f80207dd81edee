"""A run folder's parts must agree: recipe, input size and trunk, across the manifest and every model.

Covers #16's silent cases: a hand-edited run recipe, a trunk replaced by another training, and
two trainings with different seeds started into one empty folder at once.
"""

import json
import shutil

import pytest

from bonenet import store, train
from bonenet.configs import TrainConfig
from bonenet.inference import BoneNet


@pytest.fixture
def copy(run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    return run_dir


def _edit(run_dir, change):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    change(manifest)
    (run_dir / "manifest.json").write_text(json.dumps(manifest))


def test_models_record_their_recipe_and_trunk(run):
    manifest = store.read_manifest(run[0])
    for entry in manifest["models"].values():
        assert entry["recipe"] == manifest["recipe"] and entry["trunk_sha256"] == manifest["trunk"]["sha256_weights"]


@pytest.mark.corpus("S3")
def test_a_run_recipe_edited_away_from_the_models_is_refused(copy):
    from preprocessing.recipes import get_recipe

    _edit(copy, lambda m: m.update(recipe=get_recipe("sharpen").to_dict()))
    with pytest.raises(store.ManifestError, match=r"router\.keras: trained with recipe 'equalize' but the manifest"):
        BoneNet.load(copy)


@pytest.mark.corpus("S3")
def test_a_replaced_trunk_is_refused_naming_the_file(copy):
    _edit(copy, lambda m: m["trunk"].update(sha256_weights="0" * 64))
    with pytest.raises(store.ManifestError, match=r"trunk\.keras: its weights are not the trunk the manifest records"):
        BoneNet.load(copy)


@pytest.mark.corpus("S3")
def test_a_head_trained_on_another_trunk_is_refused(copy):
    _edit(copy, lambda m: m["models"]["XR_WRIST"].update(trunk_sha256="1" * 64))
    with pytest.raises(store.ManifestError, match=r"wrist\.keras: trained on another trunk"):
        BoneNet.load(copy)


@pytest.mark.corpus("S4")
@pytest.mark.slow
def test_two_trainings_with_different_seeds_into_one_empty_folder_leave_one_trunk(index, tmp_path):
    run_dir = tmp_path / "both"
    late = TrainConfig(epochs=1, batch_size=16, image_size=64, weights="none", seed=1)
    # The second training starts while the folder is still empty, so it builds its own trunk…
    job = train._prepare("wrist", index, run_dir, late)
    strategy = train._build(job, late)
    assert job.run_trunk is None
    # …and the first finishes meanwhile, writing its trunk with seed 0.
    train.train_model("router", index, run_dir, TrainConfig(epochs=1, batch_size=16, image_size=64, weights="none",
                                                            seed=0), verbose=0)
    with strategy.scope():
        train_ds, val_ds, kept = train._datasets(job, index, late, 0)
    log_path = train._fit(job, train_ds, val_ds, late, False, 0)
    with pytest.raises(ValueError, match=r"trunk\.keras: another training wrote this run's trunk"):
        train._finalize(job, index, val_ds, kept, log_path, late)
    manifest = store.read_manifest(run_dir)
    assert list(manifest["models"]) == ["router"]  # the late head was not listed
    net = BoneNet.load(run_dir)  # and the run is consistent: one trunk, every listed head trained on it
    assert net.manifest["models"]["router"]["trunk_sha256"] == manifest["trunk"]["sha256_weights"]
