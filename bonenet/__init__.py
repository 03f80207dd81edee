"""BoneNet: router + per-part abnormality models for MURA radiographs.

The public surface, what a script or a notebook needs::

    from bonenet import BoneNet, Locator, PARTS, read_dataset, train_all, evaluate_run

    net = BoneNet.load("saved_models/run")        # a trained run, checked against its manifest
    net.predict_study(["image1.png", "image2.png"])
    Locator.load().maps([gray])                   # the shipped fracture locator's p(fracture) on a film

Each name is imported on first use, so `import bonenet` stays cheap (no TensorFlow until a model is needed).
The stages live in subpackages, each importing only those below it (setup.cfg's import-linter contract):
`data` → `models` | `scoring` → `run` → `training` | `inference` → `evaluation` | `serving` → `demo`.
"""

import importlib

__version__ = "0.2.0"

_PUBLIC = {
    "BoneNet": "bonenet.inference.predictor",
    "Locator": "bonenet.models.locator",
    "PARTS": "bonenet.parts",
    "TrainConfig": "bonenet.configs",
    "read_dataset": "bonenet.data.datalist",
    "train_all": "bonenet.training.train",
    "evaluate_run": "bonenet.evaluation.evaluate",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'bonenet' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
