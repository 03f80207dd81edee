"""The words that travel with results (`bonenet.inference.notes`)."""

from bonenet.inference.notes import calibration_note, tta_note


def _manifest(calibration):
    from bonenet.run.manifest import ModelRecord, RunManifest

    wrist = ModelRecord(file="heads/wrist.keras", labels=["normal", "abnormal"], members=[{"file": "w"}],
                        recipe={"name": "equalize"}, calibration=calibration)
    return RunManifest(image_size=64, recipe={"name": "equalize"}, weights={"kind": "none"},
                       trainable_layers={"count": 20}, models={"XR_WRIST": wrist})


def test_the_calibration_note_says_whether_and_why_not():
    assert calibration_note(_manifest({"temperature": None, "reason": "too few hold-out studies"}), "XR_WRIST") == (
        "not calibrated: too few hold-out studies")
    assert calibration_note(_manifest({"temperature": 1.734}), "XR_WRIST") == (
        "temperature 1.73, fitted on the training hold-out")
    assert calibration_note(_manifest({"temperature": 1.0}), "XR_HAND") == "not calibrated: the run has no such model"


def test_the_tta_note_is_said_only_when_tta_is_on():
    assert tta_note("none") is None
    assert "twice" in tta_note("flip") and "flip" in tta_note("flip")
