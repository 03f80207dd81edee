"""Grad-CAM: where a part model looked when it called an image abnormal.

`grad_cam` is a pure function of a model and an input batch; `to_original`, `cam_box` and
`overlay` map the map back onto the radiograph and draw it.
"""

import cv2
import keras
import numpy as np
import tensorflow as tf

LAST_CONV = "top_activation"
BOX_LEVEL = 0.2


def grad_cam(model, inputs, class_index=1, layer_name=LAST_CONV, size=None):
    """Grad-CAM heat maps for `class_index` at `layer_name`, upsampled to the input image size.

    Args:
        model: a classifier built by `bonenet.models`, or its head (the layer must be inside it).
        inputs: what `model` takes: a float or uint8 image batch N×S×S×3 (0-255), or for a head the
            list of trunk outputs.
        class_index: the class to explain. Defaults to 1 (abnormal).
        layer_name: convolutional layer to explain. Defaults to "top_activation".
        size: (height, width) of the maps; needed when `inputs` are trunk outputs. Defaults to the
            image batch's size.

    Returns:
        float32 N×H×W maps in [0, 1] (all zero where the class gets no positive evidence).
    """
    if isinstance(inputs, (list, tuple)):
        x = [tf.convert_to_tensor(np.asarray(i, np.float32)) for i in inputs]
        x = x if len(x) > 1 else x[0]
    else:
        x = tf.convert_to_tensor(np.asarray(inputs, np.float32))
    if size is None:
        if isinstance(x, list) or x.shape[-1] != 3:
            raise ValueError("grad_cam needs size= when the inputs are trunk outputs, not images")
        size = tuple(x.shape[1:3])
    try:
        layer = model.get_layer(layer_name)
    except ValueError as exc:
        raise ValueError(f"{model.name}: no layer {layer_name!r} to explain; Grad-CAM needs it among the "
                         "trained layers (trainable_layers >= 3)") from exc
    # Differentiate the log-odds of the class, not its softmax probability: a confident softmax is
    # saturated and its gradient near zero (a blank map), worse under float16. The log-odds are
    # computed from the last layer's input in float32, so the map does not depend on the policy.
    dense = model.layers[-1]
    grad_model = keras.Model(model.inputs, [layer.output, dense.input])
    with tf.GradientTape() as tape:
        features, pooled = grad_model(x, training=False)
        logits = tf.matmul(tf.cast(pooled, tf.float32), tf.cast(dense.kernel, tf.float32)) + tf.cast(dense.bias,
                                                                                                     tf.float32)
        others = tf.concat([logits[:, :class_index], logits[:, class_index + 1:]], axis=1)
        target = logits[:, class_index] - tf.reduce_logsumexp(others, axis=1)
    grads, features = tf.cast(tape.gradient(target, features), tf.float32), tf.cast(features, tf.float32)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy().astype(np.float32)
    out = np.zeros((len(cam), *size), np.float32)
    for i, m in enumerate(cam):
        peak = float(m.max())
        if peak > 0:
            out[i] = cv2.resize(m / peak, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(out, 0, 1)


def to_original(cam, layout, shape):
    """Maps an S×S heat map back onto the original H×W image using a recipe `layout`; zero outside the crop."""
    top, bottom, left, right = layout["box"]
    (rh, rw), (oy, ox) = layout["resized"], layout["offset"]
    inner = cam[oy : oy + rh, ox : ox + rw]
    out = np.zeros(shape, np.float32)
    out[top:bottom, left:right] = cv2.resize(inner, (right - left, bottom - top), interpolation=cv2.INTER_LINEAR)
    return out


def cam_box(cam, level=BOX_LEVEL):
    """Bounding box [x0, y0, x1, y1] of the largest connected region above `level` × the map's maximum.

    Returns None for an all-zero map.
    """
    peak = float(cam.max())
    if peak <= 0:
        return None
    mask = (cam >= level * peak).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[best, :4])
    return [x, y, x + w, y + h]


def overlay(gray, cam, box=None, label=None, alpha=0.4):
    """Draws a heat map (and its box and label) over a uint8 H×W radiograph; returns a BGR image."""
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    heat = cv2.applyColorMap(np.uint8(np.clip(cam, 0, 1) * 255), cv2.COLORMAP_JET)
    out = cv2.addWeighted(base, 1 - alpha, heat, alpha, 0)
    if box is not None:
        cv2.rectangle(out, (box[0], box[1]), (box[2] - 1, box[3] - 1), (255, 255, 255), 2)
    if label:
        scale = max(0.4, gray.shape[1] / 900)
        cv2.putText(out, label, (8, int(24 * scale + 6)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 2)
    return out
