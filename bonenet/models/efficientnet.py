"""Model builders: an EfficientNetB0 base, the freezing policy and the classification heads.

Every model is `EfficientNetB0(include_top=False)` + global average pooling + dropout + a softmax
dense layer: 7 classes for the router, 2 (normal, abnormal) for a part model.
"""

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import keras

from bonenet.configs import DEFAULT_TRAINABLE_LAYERS, IMAGE_SIZE, OFFLINE_FLAGS
from bonenet.digests import file_sha256
from bonenet.models.backbones import radiograph_backbone
from bonenet.parts import PARTS

IMAGENET_FILE = "efficientnetb0_notop.h5"
# Where keras.utils.get_file caches downloaded application weights.
KERAS_CACHE = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
# The classifier's own layers on top of the EfficientNetB0 base.
HEAD_LAYERS = ("avg_pool", "head_dropout", "predictions")


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights could not be had; the message says how to supply them."""


def _imagenet_reachable(host="storage.googleapis.com", timeout=3.0):
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_weights(weights):
    """Turns `imagenet|none|PATH` into what `keras.applications` takes, checking availability.

    ImageNet weights come from Keras' own download and cache. Offline, with no cached copy, this
    fails at once rather than hanging in a download or quietly training from scratch.

    Returns:
        ("imagenet" | None | path string, origin dict for the manifest).

    Raises:
        WeightsUnavailableError: ImageNet weights are neither cached nor downloadable.
        FileNotFoundError: a weights PATH does not exist.
    """
    if weights is None or str(weights).lower() == "none":
        return None, {"kind": "none", "description": "random initialisation"}
    if str(weights).lower() == "radiograph":
        weights = radiograph_backbone()[0]  # checked against its provenance's sha256
    if str(weights).lower() == "imagenet":
        cached = KERAS_CACHE / IMAGENET_FILE
        if not cached.is_file() and not _imagenet_reachable():
            raise WeightsUnavailableError(
                f"ImageNet weights for EfficientNetB0 are not cached at {cached} and cannot be downloaded "
                f"(no network). Copy efficientnetb0_notop.h5 there, or train offline with {OFFLINE_FLAGS} (best on "
                "the transfer yardstick, BENCHMARKS.md), --weights PATH or --weights none."
            )
        return "imagenet", {"kind": "imagenet", "description": "Keras ImageNet weights"}
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file does not exist (expected imagenet, none or a .weights.h5 file)")
    origin = {"kind": "file", "path": str(path.resolve()), "sha256": file_sha256(path)}
    note = path.with_suffix("").with_suffix(".json")  # backbone.json beside backbone.weights.h5
    if note.is_file():
        try:
            details = json.loads(note.read_text())
        except json.JSONDecodeError:
            details = {"origin": note.read_text().strip()}
        origin["description"] = str(details.get("origin", ""))
        origin["details"] = details
        if details.get("kind") == "imagenet":  # ImageNet weights adapted on a collection (`bonenet.training.adapt`)
            origin["kind"] = "imagenet"
        elif details.get("summary"):  # pretrained on real radiographs (`bonenet.training.pretrain.pretrain_on_real`)
            origin.update(kind="radiograph", summary=details["summary"])
    return str(path), origin


def build_base(image_size=IMAGE_SIZE, weights=None):
    """Builds `EfficientNetB0(include_top=False)` on a float 0-255 RGB input.

    The input goes through `input_tensor=`, so layers such as `top_activation` stay reachable by
    name from the full model, which Grad-CAM needs.

    Args:
        image_size: input side. Defaults to 224.
        weights: None, "imagenet" or a path to backbone weights. Defaults to None.
    """
    inputs = keras.Input((image_size, image_size, 3), name="image")
    path = weights if weights not in (None, "imagenet") else None
    base = keras.applications.EfficientNetB0(
        include_top=False, weights=None if path else weights, input_tensor=inputs
    )
    if path:
        base.load_weights(path)
    return base


def _base_layers(model):
    """The EfficientNetB0 layers of a base or classifier, in order, without inputs and the head."""
    return [layer for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer) and layer.name not in HEAD_LAYERS]


def _block(name):
    # EfficientNet names every layer of a block `block6d_…`; stem and top layers by their part.
    return name.split("_")[0]


def trunk_cut(model, trainable_layers=DEFAULT_TRAINABLE_LAYERS):
    """Where the recipe cuts EfficientNetB0: the first trainable layer, and the trunk's last layer.

    The last `trainable_layers` base layers train. The frozen trunk that every model shares ends
    at the last block boundary at or before them, so exactly one tensor crosses into the head:
    for 20 layers the cut falls inside block6d, and the trunk ends at `block6c_add`. The head
    then holds the frozen rest of block6d and the trainable layers, as keras-io's fine-tuning
    example unfreezes whole blocks.

    Args:
        model: an EfficientNetB0 base or a classifier built on one.
        trainable_layers: how many base layers, counted from the end, may train. Defaults to 20.

    Returns:
        (index of the first trainable base layer, name of the trunk's last layer).

    Raises:
        ValueError: `trainable_layers` is out of range or leaves no frozen trunk.
    """
    layers = _base_layers(model)
    if not 0 <= trainable_layers <= len(layers):
        raise ValueError(f"trainable_layers must be within 0-{len(layers)}, got {trainable_layers}")
    first = len(layers) - trainable_layers
    block = _block(layers[first].name) if first < len(layers) else None
    start = next((i for i, layer in enumerate(layers) if _block(layer.name) == block), first)
    if start < 1:
        raise ValueError(f"trainable_layers={trainable_layers} leaves no frozen trunk to share")
    return first, layers[start - 1].name


def freeze_last(base, trainable_layers=DEFAULT_TRAINABLE_LAYERS, train_batchnorm=False):
    """Makes only the last `trainable_layers` layers of `base` trainable; BatchNorm frozen by default.

    Frozen BatchNorm layers run in inference mode in Keras 3, so their moving statistics never
    move: with a small fine-tuning set, batch statistics would drift away from what the frozen
    layers before them were trained with.

    Args:
        base: the EfficientNetB0 model.
        trainable_layers: how many layers, counted from the end, may train. Defaults to 20.
        train_batchnorm: let the BatchNorm layers among them train too, statistics included (deep
            fine-tuning on a new domain). Defaults to False.

    Returns:
        The names of the layers left trainable, in order.
    """
    first, _ = trunk_cut(base, trainable_layers)
    base.trainable = True
    names = []
    for i, layer in enumerate(_base_layers(base)):
        layer.trainable = i >= first and (train_batchnorm or not isinstance(layer, keras.layers.BatchNormalization))
        if layer.trainable:
            names.append(layer.name)
    return names


@dataclass(frozen=True)
class Tuning:
    """What of a classifier fine-tunes and how its head regularises: the last `trainable_layers` base layers
    (the BatchNorm layers among them stay frozen unless `train_batchnorm`), and dropout before the softmax."""

    trainable_layers: int = DEFAULT_TRAINABLE_LAYERS
    train_batchnorm: bool = False
    dropout: float = 0.2


def build_classifier(num_classes, name, image_size=IMAGE_SIZE, weights=None, tuning=Tuning()):
    """Builds base + pooling + dropout + softmax, with the freezing policy (`Tuning`) applied.

    The softmax layer is float32 even under mixed precision, so probabilities stay exact.

    Returns:
        (model, names of the trainable base layers).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    base = build_base(image_size, weights)
    trainable = freeze_last(base, tuning.trainable_layers, tuning.train_batchnorm)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(base.output)
    x = keras.layers.Dropout(tuning.dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(base.input, outputs, name=name), trainable


def build_router(**kwargs):
    """The 7-class body-part router. Takes `build_classifier`'s keyword arguments."""
    return build_classifier(len(PARTS), name="router", **kwargs)


def build_part_model(part, **kwargs):
    """A part's normal/abnormal model. Takes `build_classifier`'s keyword arguments."""
    return build_classifier(2, name=f"part_{part.lower()}", **kwargs)


def use_xla():
    """Whether to compile with XLA, as `bonenet.runtime.start` decided: on a GPU yes; on CPU no, where
    XLA ran EfficientNetB0 inference about 5x slower than TensorFlow's own kernels (2 cores)."""
    from bonenet import runtime

    return runtime.start()["xla"]


# On a CPU the trunk is fastest a few images at a time: at 224 px its first blocks hold 112×112×96
# float32 activations, 4.8 MB per image, so a batch of 32 works far outside the caches.
# benchmarks/trunk_speed.py measured 4 images per call at 224 px 1.24x as fast as 32 (2-core EPYC;
# BENCHMARKS.md).
CPU_TRUNK_PIXELS = 4 * 224 * 224


def trunk_batch_size(image_size, batch_size=32):
    """Images per call when the trunk runs in inference mode (feature caching, evaluate, predict).

    On a GPU, `batch_size`; on a CPU, as many images as hold `CPU_TRUNK_PIXELS` pixels (4 at 224 px),
    at least 1 and at most `batch_size`. A batch's size never changes an image's result beyond
    float32 rounding.
    """
    from bonenet import runtime

    if runtime.start()["gpus"]:
        return batch_size
    return max(1, min(batch_size, CPU_TRUNK_PIXELS // (image_size * image_size)))


def set_xla(*models):
    """Applies `use_xla()` to models that predict without being compiled (loaded or split ones)."""
    flag = use_xla()
    for model in models:
        model.jit_compile = flag


def compile_model(model, learning_rate=1e-4, jit_compile="auto"):
    """Compiles with Adam and categorical cross-entropy, reporting accuracy (and AUC for 2 classes)."""
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if model.output_shape[-1] == 2:
        metrics.append(keras.metrics.AUC(name="auc"))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=metrics,
        jit_compile=jit_compile,
    )
    return model


def split_model(model, trainable_layers=DEFAULT_TRAINABLE_LAYERS):
    """Splits a classifier at `trunk_cut` into (trunk, head) sharing the classifier's layer objects.

    `trunk(image)` gives the one tensor at the block boundary and `head(features)` the
    classifier's output, so `head(trunk(x)) == model(x)` exactly; training the head trains the
    classifier.
    """
    _, end = trunk_cut(model, trainable_layers)
    tensor = model.get_layer(end).output
    return keras.Model(model.input, tensor, name="trunk"), keras.Model(tensor, model.output, name=f"{model.name}_head")


def join_model(trunk, head, name=None):
    """The image-to-probabilities model `head(trunk(image))`, the trunk always in inference mode.

    Full-mode training fits this model. Keras applies dropout whenever `training=True`, frozen or
    not, so the trunk is called with `training=False`: its stochastic-depth dropout stays off, and
    full and cached training train the same function.
    """
    inputs = keras.Input(trunk.inputs[0].shape[1:], name="image")
    return keras.Model(inputs, head(trunk(inputs, training=False)), name=name or head.name.removesuffix("_head"))


def copy_weights(source, target):
    """Sets `target`'s weights to `source`'s, weight by weight in order (two models of one architecture).

    Matched by position, not layer name: Keras numbers unnamed layers per process (`rescaling_1`),
    so names differ between two builds of the same network.

    Raises:
        ValueError: the two models' weights differ in number or shape.
    """
    if len(source.weights) != len(target.weights):
        raise ValueError(f"{source.name} has {len(source.weights)} weights, {target.name} {len(target.weights)}")
    for a, b in zip(source.weights, target.weights, strict=True):
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(f"weight {a.path} {tuple(a.shape)} does not fit {b.path} {tuple(b.shape)}")
        b.assign(a)
