"""`bonenet export`: a trained run as one artifact for serving runtimes, through Keras' own `Model.export`.

The exported graph takes a batch of prepared images (the run's recipe applied, at its size: float32
N×S×S×3 in 0-255, what `BoneNet.prepare` returns) and gives, from one pass of the shared trunk, the
router's probabilities (`router_probs`, N×7) and every part model's p(abnormal) (`p_abnormal`, N×P), each
through its model's temperature (`bonenet.scoring.calibration`). Beside the artifact, `bonenet_export.json` holds
what a runtime needs to use it exactly as BoneNet does: the recipe, the size, the labels, the study rule,
the thresholds, the calibration and the backbone's origin.

Formats and what they need (the `export` extra: `pip install "bonenet[export]"`):

- `savedmodel`: TensorFlow's SavedModel (`tf.saved_model.load(dir).serve(images)`); nothing more.
- `onnx`: ONNX through tf2onnx, run with onnxruntime.
- `litert`: LiteRT (TensorFlow Lite) flatbuffer, run with ai-edge-litert's interpreter.
"""

import contextlib
import datetime
import json
import warnings
from pathlib import Path

import keras
import numpy as np
from keras import ops

from bonenet import __version__
from bonenet.configs import ExportConfig
from bonenet.files import check_replaceable, folder_written_whole
from bonenet.inference.heatmap import locator_of
from bonenet.inference.notes import calibration_note
from bonenet.models.locator import LOCATOR_RECIPE, STRIDE
from bonenet.run.model_card import NOT_FOR_CLINICAL_USE
from bonenet.runtime import in_float32
from bonenet.scoring.calibration import EPS

# format → (Keras' name for it, the artifact's name in the export folder)
FORMATS = {"savedmodel": ("tf_saved_model", "savedmodel"), "onnx": ("onnx", "bonenet.onnx"),
           "litert": ("litert", "bonenet.tflite")}
LOCATOR_ARTIFACTS = {"savedmodel": "locator_savedmodel", "onnx": "locator.onnx", "litert": "locator.tflite"}
EXPORT_JSON = "bonenet_export.json"
STUDY_RULE = {
    "part": "the column of the mean of router_probs over the study's images with the highest value, among "
            "the parts in p_abnormal_parts",
    "score": "the mean over the study's images of p_abnormal's column for that part",
    "decision": "abnormal when the score reaches thresholds[part].threshold",
}


@keras.saving.register_keras_serializable(package="bonenet")
class Temperature(keras.layers.Layer):
    """softmax(log p / T) of softmax probabilities p: `bonenet.scoring.calibration.apply_temperature` in the graph."""

    def __init__(self, temperature, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, probs):
        """The calibrated probabilities."""
        return ops.softmax(ops.log(ops.clip(probs, EPS, 1.0)) / self.temperature, axis=-1)

    def get_config(self):
        """The layer's config, with its temperature."""
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="bonenet")
class AbnormalColumn(keras.layers.Layer):
    """A part model's p(abnormal), its softmax's second column, kept as N×1."""

    def call(self, probs):
        """Column 1 of the probabilities."""
        return probs[:, 1:2]


@keras.saving.register_keras_serializable(package="bonenet")
class FlipViews(keras.layers.Layer):
    """N images → 2N: the images, then their horizontal mirrors (`bonenet.inference.predictor.tta_views`'s "flip")."""

    def call(self, images):
        """The images and their mirrors, one batch."""
        return ops.concatenate([images, ops.flip(images, axis=2)], axis=0)


@keras.saving.register_keras_serializable(package="bonenet")
class ViewMean(keras.layers.Layer):
    """2N probabilities from `FlipViews`' batch → N: each image's mean over its two views."""

    def call(self, probs):
        """The mean of the two halves of the batch."""
        return ops.mean(ops.reshape(probs, (2, -1, probs.shape[-1])), axis=0)


def _output(model, x, tta):
    out = model(x)
    out = out[0] if isinstance(out, (list, tuple)) else out
    return out if tta == "none" else ViewMean()(out)


def _calibrated(net, key, probs):
    temperature = net.temperature(key)
    return probs if temperature is None else Temperature(temperature, name=f"temperature_{key.lower()}")(probs)


@in_float32
def serving_model(net):
    """One Keras model of a loaded `BoneNet`: prepared images → {"router_probs", "p_abnormal"}, calibrated,
    the trunk run once (once per view under the run's test-time augmentation) and every head, an
    ensemble's members each, reading it; every layer it adds computes in float32."""
    image = keras.Input((net.image_size, net.image_size, 3), name="image")
    features = net.trunk(image if net.tta == "none" else FlipViews()(image))
    # A trunk saved with a one-element output list returns a list; the heads take the tensor itself.
    features = features[0] if isinstance(features, (list, tuple)) else features
    router = keras.layers.Identity(name="router_probs")(_calibrated(net, "router", _output(net.models["router"],
                                                                                              features, net.tta)))
    columns = [AbnormalColumn(name=f"p_abnormal_{part.lower()}")(_calibrated(net, part, _output(net.models[part],
                                                                                                features, net.tta)))
               for part in net.parts]
    joined = keras.layers.Concatenate(name="p_abnormal") if len(columns) > 1 else keras.layers.Identity(name="p_abnormal")
    p_abnormal = joined(columns if len(columns) > 1 else columns[0])
    return keras.Model(image, {"router_probs": router, "p_abnormal": p_abnormal}, name="bonenet")


@contextlib.contextmanager
def _normalization_read_from_variables(model):
    """EfficientNet's input Normalization keeps its mean and variance as eager constants made from its
    variables; tf2onnx turns such captured constants into extra graph inputs, which a runtime cannot feed.
    Inside this block the layers read the variables themselves (same values), which every converter freezes."""
    patched = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization) and getattr(layer, "adapt_mean", None) is not None:
            patched.append((layer, layer.mean, layer.variance))
            # The variables have shape (channels,), which broadcasts over N×H×W×C as the constants did.
            object.__setattr__(layer, "mean", layer.adapt_mean)
            object.__setattr__(layer, "variance", layer.adapt_variance)
    try:
        yield
    finally:
        for layer, mean, variance in patched:
            object.__setattr__(layer, "mean", mean)
            object.__setattr__(layer, "variance", variance)


def export_facts(net, fmt, artifact):
    """`bonenet_export.json`: everything a runtime needs to use the artifact as BoneNet does."""
    models = net.manifest.models
    return {
        "format": fmt, "artifact": artifact, "bonenet_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run": str(net.run_dir.resolve()) if net.run_dir else None,
        "input": {"name": "image", "shape": [None, net.image_size, net.image_size, 3], "dtype": "float32",
                  "layout": "NHWC", "values": "0-255",
                  "prepared": "the recipe below applied to the grayscale radiograph (bonenet.data.read.read_prepared)"},
        "outputs": {"router_probs": {"shape": [None, len(net.labels)], "labels": net.labels},
                    "p_abnormal": {"shape": [None, len(net.parts)], "parts": net.parts}},
        "recipe": net.manifest.recipe, "image_size": net.image_size,
        "tta": {"views": net.tta, "applied_in_graph": net.tta != "none"},
        "members": {key: len(heads) for key, heads in net.members.items()},
        "study_rule": STUDY_RULE,
        "thresholds": {part: {"threshold": t, "source": source} for part, (t, source) in net.thresholds.items()},
        "calibration": {key: {"applied_in_graph": net.temperature(key) is not None, "note": calibration_note(net.manifest, key),
                              **models[key].calibration} for key in ["router", *net.parts]},
        "backbone": net.manifest.weights,
        "notice": NOT_FOR_CLINICAL_USE,
    }


def export_run(models_dir, fmt, out_dir, net=None, force=False, config=ExportConfig()):
    """Exports the run in `models_dir` as `fmt` (savedmodel, onnx or litert) into `out_dir`, whole or not at all.

    Args:
        net: the run already loaded as a `BoneNet` (tuned thresholds). Defaults to None: loaded here.
        config: an `ExportConfig`: `tta` "flip" puts the test-time views in the graph (`FlipViews`,
            `ViewMean`); `locator` exports the run's fracture locator (`net.locator`, or the shipped one) beside
            it, in the same format (`locator_facts`). Defaults to neither.
        force: replace `out_dir` even when it holds files BoneNet did not write. Defaults to False: an earlier
            export (with its `bonenet_export.json`) is replaced whole, anything else refused.

    Returns:
        (the artifact's path, the facts written to `bonenet_export.json`).

    Raises:
        ValueError: an unknown format.
        ImportError: the format's converter is not installed (the message names the extra).
    """
    from bonenet.inference.predictor import BoneNet

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "onnx":
        _require("tf2onnx", "onnx")
    check_replaceable(out_dir, EXPORT_JSON, force)  # before the minutes an export takes
    net = (net or BoneNet.load(models_dir)).with_tta(config.tta)
    keras_format, artifact = FORMATS[fmt]
    model = serving_model(net)
    locator = locator_of(net) if config.locator else None
    facts = {**export_facts(net, fmt, artifact), "locator": locator_facts(locator, fmt)}
    with folder_written_whole(out_dir, EXPORT_JSON, force) as tmp:
        _export_model(model, net.trunk, tmp / artifact, keras_format)
        if locator is not None:
            _export_model(locator.model, locator.model.get_layer("locator_trunk"), tmp / LOCATOR_ARTIFACTS[fmt],
                          keras_format)
        (tmp / EXPORT_JSON).write_text(json.dumps(facts, indent=2))
    return Path(out_dir) / artifact, facts


def _export_model(model, trunk, path, keras_format):
    size = model.input.shape[1]
    model(np.zeros((1, size, size, 3), np.float32))  # the ONNX export wants a model once called
    with _normalization_read_from_variables(trunk), warnings.catch_warnings():
        # Keras' own tf2onnx shim probes `np.object`, which NumPy 2 answers with this warning.
        warnings.filterwarnings("ignore", message="In the future `np.object`", category=FutureWarning)
        model.export(str(path), format=keras_format, verbose=False)


def locator_facts(locator, fmt):
    """What `bonenet_export.json` says of the fracture locator: that it is not carried, or how to use it."""
    if locator is None:
        return {"carried": False, "why": "not asked for: export with --locator to carry the fracture locator; "
                                         "without it a runtime has the scores and no fracture map"}
    held_out = (locator.provenance.get("held_out") or {}).get("all", {})
    return {"carried": True, "artifact": LOCATOR_ARTIFACTS[fmt],
            "input": {"name": "image", "shape": [None, locator.image_size, locator.image_size, 3], "dtype": "float32",
                      "values": "0-255", "prepared": LOCATOR_RECIPE.to_dict()},
            "output": {"shape": [None, locator.image_size // STRIDE, locator.image_size // STRIDE],
                       "values": "logits of p(fracture), one per 8×8 input pixels"},
            "threshold": locator.threshold, "boxes": "connected regions of sigmoid(logits), upsampled to the "
                                                     "input and mapped to the film, at or above the threshold",
            "sha256": locator.provenance.get("sha256"), "note": locator.note(),
            "held_out": {k: held_out.get(k) for k in ("pointing", "detector")}}


def _require(*modules):
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"exporting needs {', '.join(missing)}: pip install \"bonenet[export]\"")
