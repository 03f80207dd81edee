"""Published per-part results that BoneNet is compared against, kept as data with their sources."""

STANFORD_SOURCE = (
    "Rajpurkar et al. 2017, MURA: Large Dataset for Abnormality Detection in Musculoskeletal Radiographs, "
    "arXiv:1712.06957 (DenseNet-169 ensemble, Cohen's kappa on the hidden test set)"
)
STANFORD_KAPPA = {
    "XR_ELBOW": 0.710,
    "XR_FINGER": 0.389,
    "XR_FOREARM": 0.737,
    "XR_HAND": 0.851,
    "XR_HUMERUS": 0.600,
    "XR_SHOULDER": 0.729,
    "XR_WRIST": 0.931,
    "overall": 0.705,
}

PATEL_SOURCE = "Patel et al., EfficientNetB0 two-stage (router + per-part classifiers) on MURA, per-part results"
PATEL = {
    "XR_ELBOW": {"accuracy": 0.8235, "precision": 0.8000, "sensitivity": 0.7879, "f1": 0.7939},
    "XR_FINGER": {"accuracy": 0.7386, "precision": 0.9574, "sensitivity": 0.5422, "f1": 0.6923},
    "XR_FOREARM": {"accuracy": 0.8195, "precision": 0.8704, "sensitivity": 0.7344, "f1": 0.7966},
    "XR_HAND": {"accuracy": 0.6863, "precision": 0.8462, "sensitivity": 0.3333, "f1": 0.4783},
    "XR_HUMERUS": {"accuracy": 0.6601, "precision": 0.6667, "sensitivity": 0.9278, "f1": 0.7759},
    "XR_SHOULDER": {"accuracy": 0.7647, "precision": 0.7921, "sensitivity": 0.8421, "f1": 0.8163},
    "XR_WRIST": {"accuracy": 0.8039, "precision": 0.9855, "sensitivity": 0.7010, "f1": 0.8193},
}
