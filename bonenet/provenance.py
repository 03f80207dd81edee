"""Whether a run has learned from real radiographs, decided in one place for every output that says so.

A run's figures and answers say little about real radiographs when its backbone is not
ImageNet-pretrained (the shipped synthetic backbone, or random weights) or when it trained on
synthetic data. The caveat on each prediction, the warning of `predict` and `serve`, the model
card's limits and the report's banner all ask `unproven`, and only word the answer differently.
Reads dicts only: no TensorFlow.
"""

BACKBONE = "backbone"
DATA = "data"


def unproven(weights, synthetic):
    """Why a run's results say little about real radiographs: a list of `BACKBONE` (its trunk is not
    ImageNet-pretrained) and `DATA` (it trained or was evaluated on synthetic data); [] when neither.

    Args:
        weights: the manifest's (or an evaluation's) `weights` entry.
        synthetic: whether the data was made by `make-synthetic`.
    """
    reasons = []
    if (weights or {}).get("kind") != "imagenet":
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
    return any(m.get("dataset", {}).get("synthetic") for m in manifest["models"].values())


def caveat(manifest):
    """One short line for every output of a run that never learned from a real radiograph; None otherwise."""
    words = {BACKBONE: "no ImageNet backbone", DATA: "synthetic training data"}
    reasons = unproven(manifest.get("weights"), trained_on_synthetic(manifest))
    return f"CAVEAT: {', '.join(words[r] for r in reasons)}; unproven on real radiographs" if reasons else None


def backbone_warning(weights):
    """A sentence for users when the trunk is not ImageNet-pretrained, else None: models on a
    synthetic or random backbone have not seen real radiographs, so their answers mean little."""
    if BACKBONE not in unproven(weights, False):
        return None
    return (f"this run's backbone is not ImageNet-pretrained ({backbone_origin(weights)}); its results on real "
            "radiographs mean little")
