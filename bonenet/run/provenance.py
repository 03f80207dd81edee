"""Whether a run has learned from real radiographs, decided in one place for every output that says so.

A run's figures and answers say little about real radiographs when its backbone has seen none (the
shipped synthetic backbone, or random weights) or when it trained on synthetic data. A backbone
pretrained on open real radiographs (`--weights radiograph`) has seen some, but not ImageNet, and every
output says so. The caveat on each prediction, the warning of `predict` and `serve`, the model
card's limits and the report's banner all ask `unproven`, and only word the answer differently.
Reads a run's `RunManifest` and dicts only: no TensorFlow.
"""

BACKBONE = "backbone"  # the trunk has never seen a real radiograph
RADIOGRAPH = "radiograph"  # the trunk was pretrained on open real radiographs, not ImageNet
DATA = "data"


def unproven(weights, synthetic):
    """What a run's outputs must say of where its knowledge comes from: a list of `BACKBONE` (its trunk has
    never seen a real radiograph) or `RADIOGRAPH` (pretrained on open real radiographs, not ImageNet), and
    `DATA` (it trained or was evaluated on synthetic data); [] for an ImageNet backbone on real data.

    Args:
        weights: the manifest's (or an evaluation's) `weights` entry.
        synthetic: whether the data was made by `make-synthetic`.
    """
    reasons = []
    kind = (weights or {}).get("kind")
    if kind == "radiograph":
        reasons.append(RADIOGRAPH)
    elif kind != "imagenet":
        reasons.append(BACKBONE)
    if synthetic:
        reasons.append(DATA)
    return reasons


def backbone_origin(weights):
    """Where a run's trunk weights came from, in words (the manifest's description, else its kind)."""
    weights = weights or {}
    return weights.get("description") or weights.get("kind", "unknown")


def trained_on_synthetic(manifest):
    """Whether any model of a run trained on synthetic data (its manifest entries say so)."""
    return any(m.synthetic for m in manifest.models.values())


def caveat(manifest):
    """One short line for every output of a run that never learned from a real radiograph; None otherwise."""
    weights = manifest.weights
    reasons = unproven(weights, trained_on_synthetic(manifest))
    words = {BACKBONE: "no ImageNet backbone", DATA: "synthetic training data",
             RADIOGRAPH: f"backbone {weights.get('summary', 'pretrained on open real radiographs, not ImageNet')}"}
    if not reasons:
        return None
    if reasons == [RADIOGRAPH]:
        return f"CAVEAT: {words[RADIOGRAPH]}"
    return f"CAVEAT: {', '.join(words[r] for r in reasons)}; unproven on real radiographs"


def backbone_warning(weights):
    """A sentence for users when the trunk is not ImageNet-pretrained, else None: models on a
    synthetic or random backbone have not seen real radiographs, so their answers mean little."""
    if BACKBONE not in unproven(weights, False):
        return None
    return (f"this run's backbone is not ImageNet-pretrained ({backbone_origin(weights)}); its results on real "
            "radiographs mean little")
