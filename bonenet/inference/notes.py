"""The words that travel with a run's results: how its probabilities are calibrated and what test-time
augmentation costs. What the backbone is, and the caveat of a run that never saw a real radiograph, are
`bonenet.run.provenance`'s; what a heat map may claim is `bonenet.scoring.localisation.heat_map_note`."""


def calibration_note(manifest, key):
    """How model `key`'s probabilities are calibrated, in words, for every output that carries them."""
    if key not in manifest.models:
        return "not calibrated: the run has no such model"
    calibration = manifest.models[key].calibration
    if calibration.get("temperature") is None:
        return f"not calibrated: {calibration['reason']}"
    return f"temperature {calibration['temperature']:.3g}, fitted on {calibration.get('fitted_on', 'the training hold-out')}"


def tta_note(tta):
    """A sentence on what test-time augmentation `tta` costs, when it is on; None otherwise."""
    if tta == "none":
        return None
    return (f"test-time augmentation {tta}: each image is scored as the mean over it and its mirror, so the trunk "
            "runs twice per image (about twice the time); the temperatures were fitted on single views")
