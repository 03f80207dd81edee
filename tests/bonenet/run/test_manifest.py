"""A run's manifest (`bonenet.run.manifest`): its format, the numbers a run acts on, models that must agree with
it (a hand-edited run recipe is refused, naming the file), and sections recorded after training."""

import dataclasses
import json

import pytest
from conftest import edit_manifest as _edit
from conftest import run_cli

from bonenet.inference.predictor import BoneNet
from bonenet.run import store
from bonenet.run.manifest import ManifestError, RunManifest, read_manifest, record_section, run_lock


def test_models_record_their_recipe_and_trunk(run):
    manifest = read_manifest(run[0])
    for entry in manifest.models.values():
        assert entry.recipe == manifest.recipe and entry.trunk_sha256 == manifest.trunk["sha256_weights"]


@pytest.mark.corpus("S3")
def test_a_run_recipe_edited_away_from_the_models_is_refused(copy):
    from bonenet.preprocessing.recipes import get_recipe

    _edit(copy, lambda m: m.update(recipe=get_recipe("sharpen").to_dict()))
    with pytest.raises(ManifestError, match=r"router\.keras: trained with recipe 'equalize' but the manifest"):
        BoneNet.load(copy)


@pytest.mark.parametrize("field", ["members", "recipe", "calibration"])
def test_a_run_from_before_a_model_field_existed_is_refused_by_name_never_guessed(copy, field, capsys):
    _edit(copy, lambda m: m["models"]["XR_WRIST"].pop(field))
    with pytest.raises(ManifestError, match=rf"manifest\.json: models\.XR_WRIST\.{field} is missing: the run was "
                                            "written by a development version"):
        read_manifest(copy)
    code, err = run_cli(["predict", str(copy), "--models-dir", str(copy)], capsys)
    assert code == 2 and len(err) == 1 and f"models.XR_WRIST.{field} is missing" in err[0], err


def test_manifest_of_another_format_version_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "bonenet-run", "format_version": 99}))
    with pytest.raises(ManifestError, match="format version 99"):
        store.load_run_models(tmp_path)
    with pytest.raises(ManifestError, match="no manifest"):
        read_manifest(tmp_path / "empty")


def _set_temperature(value):
    def change(manifest):
        manifest["models"]["XR_WRIST"]["calibration"] = {"method": "temperature", "temperature": value}
    return change


@pytest.mark.corpus("V1")
@pytest.mark.parametrize("value", [0, -1, float("nan"), 1e9, "1.5", True])
def test_a_tampered_temperature_is_refused_naming_the_manifest_and_the_field(copy, value, capsys):
    _edit(copy, _set_temperature(value))
    with pytest.raises(ManifestError) as info:
        read_manifest(copy)
    message = str(info.value)
    assert message.startswith(f"{copy / 'manifest.json'}: models.XR_WRIST.calibration.temperature must be null or")
    assert "\n" not in message
    for command in (["predict", str(copy), "--models-dir", str(copy)], ["serve", "--models-dir", str(copy)]):
        code, err = run_cli(command, capsys)  # neither scores nor serves: one line, no traceback
        assert code == 2 and len(err) == 1 and "calibration.temperature must be" in err[0], err


@pytest.mark.corpus("V1")
@pytest.mark.parametrize("field, value", [("threshold", 1.5), ("threshold", float("nan")), ("threshold", "0.4")])
def test_a_tampered_threshold_is_refused(copy, field, value):
    _edit(copy, lambda m: m["models"]["XR_WRIST"].update(tuning={field: value, "studies": 30}))
    with pytest.raises(ManifestError, match="models.XR_WRIST.tuning.threshold must be null or a number within"):
        read_manifest(copy)


def test_a_section_recorded_after_training_joins_the_manifest_and_keeps_the_rest(copy):
    before = read_manifest(copy)
    with run_lock(copy):  # re-entered by this process: the lock does not wait for itself
        record_section(copy, "localisation", "XR_WRIST", {"hit": 0.5})
    after = read_manifest(copy)
    assert after.localisation == {"XR_WRIST": {"hit": 0.5}}
    assert dataclasses.replace(after, localisation={}) == dataclasses.replace(before, localisation={})


def test_the_run_record_reads_and_writes_the_manifest_as_stored(run):
    """One record of a run: what `read_manifest` gives writes back as the file holds it, field for field."""
    stored = json.loads((run[0] / "manifest.json").read_text())
    manifest = read_manifest(run[0])
    assert manifest.to_json() == stored
    assert RunManifest.from_json(manifest.to_json(), "x") == manifest
    wrist = manifest.models["XR_WRIST"]
    assert wrist.threshold == stored["models"]["XR_WRIST"].get("tuning", {}).get("threshold")
    assert wrist.temperature == stored["models"]["XR_WRIST"]["calibration"]["temperature"] and wrist.synthetic
    assert manifest.models["router"].tuning is None and "tuning" not in manifest.models["router"].to_json()
