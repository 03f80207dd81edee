"""Grad-CAM: where a part model looked when it called an image abnormal.

`grad_cam` is a pure function of a model and an input batch; `cam_box` and
`overlay` map the map back onto the radiograph and draw it.
"""

import weakref

import cv2
import keras
import numpy as np
import tensorflow as tf

LAST_CONV = "top_activation"
CLASSIFIER = "predictions"  # the softmax Dense every model of `bonenet.models.efficientnet` ends with
BOX_LEVEL = 0.2
METHODS = ("gradcam", "hirescam")


_LOWER = weakref.WeakKeyDictionary()


def _lower(model, layer_names=()):
    """model's input → [the named layers' outputs, the model's output or, for a head, its classifier's input],
    built once per model and layers: `serve` explains every image it reads, and a new Keras model per call
    would grow memory and time."""
    per_model = _LOWER.setdefault(model, {})
    key = tuple(layer_names)
    if key not in per_model:
        end = model.get_layer(CLASSIFIER).input if _has(model, CLASSIFIER) else model.output
        per_model[key] = keras.Model(model.inputs, [*(model.get_layer(n).output for n in key), end])
    return per_model[key]


def _run(model, x):
    """A model's outputs as a list, whether it has one or several."""
    out = model(x, training=False)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _has(model, name):
    return any(layer.name == name for layer in model.layers)


def _log_odds(pooled, heads, class_index):
    """The log-odds of `class_index` under the mean of the heads' softmax, from each head's classifier input,
    in float32: a confident softmax is saturated and its own gradient near zero (a blank map), worse under
    float16. For one head it is the class's logit against the log-sum-exp of the others."""
    probs = []
    for x, head in zip(pooled, heads, strict=True):
        dense = head.get_layer(CLASSIFIER)
        logits = tf.matmul(tf.cast(x, tf.float32), tf.cast(dense.kernel, tf.float32)) + tf.cast(dense.bias, tf.float32)
        probs.append(tf.nn.log_softmax(logits))
    log_p = tf.reduce_logsumexp(tf.stack(probs), axis=0) - np.log(len(heads))  # log of the mean probability
    others = tf.concat([log_p[:, :class_index], log_p[:, class_index + 1:]], axis=1)
    return log_p[:, class_index] - tf.reduce_logsumexp(others, axis=1)


def heat_maps(trunk, heads, images, layers=(LAST_CONV,), methods=("gradcam",), class_index=1):
    """Heat maps of `class_index` for prepared images at each of `layers` by each of `methods`: one forward and
    backward pass for the trunk's layers, one for the heads'.

    The explained score is the log-odds of the mean of the heads' probabilities: the ensemble's own score,
    or one model's. A layer may be the trunk's (one tensor every member reads) or each head's own; a
    head's copy of it contributes its member's term, and the terms add up, as the linearised ensemble
    score does.

    Args:
        trunk: the run's trunk.
        heads: the model's heads, one per ensemble member, as a run holds them (loaded from their files: a head
            split from a model in memory reads tensors of that model's graph, not of its own).
        images: prepared images N×S×S×3 (0-255).
        layers: the convolutional layers to explain.
        methods: "gradcam" weighs each channel by its mean gradient (Selvaraju et al., 2017); "hirescam"
            multiplies gradient and activation at each position (Draelos & Carin, 2020).
        class_index: the class to explain. Defaults to 1 (abnormal).

    Returns:
        {(layer, method): float32 N×S×S maps in [0, 1]}, each scaled to its maximum (all zero without positive
        evidence).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {unknown[0]!r}")
    missing = [n for n in layers if not _has(trunk, n) and not all(_has(h, n) for h in heads)]
    if missing:
        raise ValueError(f"no layer {missing[0]!r} in the trunk or the heads to explain; Grad-CAM needs it among "
                         "their layers")
    x = tf.convert_to_tensor(np.asarray(images, np.float32))
    maps = {}
    for in_trunk in (True, False):
        group = tuple(n for n in layers if _has(trunk, n) == in_trunk)
        if group:
            activations, grads = _gradients(trunk, heads, x, group, in_trunk, class_index)
            maps.update(_combined(group, activations, grads, methods, tuple(x.shape[1:3])))
    return maps


def _gradients(trunk, heads, x, layers, in_trunk, class_index):
    """The activations of `layers` (all in the trunk, or all in every head) and the gradients of the members'
    mean log-odds of `class_index` with respect to them, per layer, one tensor per member."""
    with tf.GradientTape() as tape:
        if in_trunk:
            *shared, features = _run(_lower(trunk, layers), x)
            activations = [[a] for a in shared]  # per layer, one tensor for every member
            pooled = [_run(_lower(head), features)[0] for head in heads]
        else:
            features = _run(trunk, x)[0]
            outputs = [_run(_lower(head, layers), features) for head in heads]
            activations = [[out[i] for out in outputs] for i in range(len(layers))]  # per layer, one per member
            pooled = [out[-1] for out in outputs]
        target = _log_odds(pooled, heads, class_index)
    return activations, tape.gradient(target, activations)


def _combined(layers, activations, grads, methods, size):
    """{(layer, method): N×`size` maps}: each method's weighting of the activations, summed over members."""
    maps = {}
    for layer, acts, gs in zip(layers, activations, grads, strict=True):
        for method in methods:
            total = 0.0
            for a, g in zip(acts, gs, strict=True):
                a, g = tf.cast(a, tf.float32), tf.cast(g, tf.float32)
                weights = tf.reduce_mean(g, axis=(1, 2), keepdims=True) if method == "gradcam" else g
                total = total + tf.reduce_sum(weights * a, axis=-1)
            maps[layer, method] = _scaled(tf.nn.relu(total).numpy().astype(np.float32), size)
    return maps


def _scaled(cam, size):
    """Maps N×h×w upsampled to `size`, each scaled to its own maximum."""
    out = np.zeros((len(cam), *size), np.float32)
    for i, m in enumerate(cam):
        peak = float(m.max())
        if peak > 0:
            out[i] = cv2.resize(m / peak, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(out, 0, 1)


def grad_cam(trunk, heads, images, class_index=1, layer_name=LAST_CONV, method="gradcam"):
    """One layer's heat maps by one method (`heat_maps`): float32 N×S×S in [0, 1]."""
    return heat_maps(trunk, heads, images, (layer_name,), (method,), class_index)[layer_name, method]


def foreground(gray):
    """The radiograph's Otsu foreground (5×5 blur), dilated by 2% of the image's side: the anatomy, without the
    film around it, as a boolean H×W mask."""
    _, mask = cv2.threshold(cv2.GaussianBlur(gray, (5, 5), 0), 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    k = max(3, int(0.02 * max(gray.shape)) | 1)
    return cv2.dilate(mask, np.ones((k, k), np.uint8)).astype(bool)


def keep_foreground(cam, gray):
    """A heat map on the radiograph kept to its foreground (`foreground`), scaled to its maximum again: the
    film and what is burnt into it (labels, markers) hold no finding."""
    kept = np.where(foreground(gray), cam, 0).astype(np.float32)
    peak = float(kept.max())
    return kept / peak if peak > 0 else kept


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


BOX_COLOUR = (0, 215, 255)  # BGR amber: not a grey level, so it never reads as anatomy
ABNORMAL_COLOUR, NORMAL_COLOUR = (60, 60, 235), (90, 200, 90)
HEAT_ALPHA = {True: 0.6, False: 0.25}  # most opacity at the hottest pixel: strong for abnormal, faint for normal


def _text_scale(lines, width, thickness):
    """The largest Hershey scale (≤ 1) at which every line fits `width` pixels."""
    widest = max(cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, 1.0, thickness)[0][0] for line in lines)
    return min(1.0, 0.95 * (width - 12) / max(widest, 1))


def overlay(gray, cam, abnormal, boxes=(), lines=(), top="max"):
    """Draws a Grad-CAM heat map over a radiograph, with a colour bar and a caption band.

    The heat's opacity follows the heat, so cold regions show the plain radiograph. An image
    decided normal gets a faint overlay. The map runs from 0 to its scale's top (Grad-CAM's own
    maximum, or a probability of 1), which the colour bar says. The caption sits in a band above the
    image, where it covers no anatomy.

    Args:
        gray: the uint8 H×W radiograph.
        cam: float H×W map in [0, 1] on the radiograph.
        abnormal: the image's decision; None when unscored (drawn as normal).
        boxes: [x0, y0, x1, y1] boxes to draw (the caller decides which an image gets).
        lines: caption lines; the last is drawn in the decision's colour.
        top: the colour bar's top label: "max" for a map scaled to its own maximum (Grad-CAM), "p=1" for a
            probability. Defaults to "max".

    Returns:
        A BGR uint8 image: caption band above, radiograph, colour bar on the right.
    """
    abnormal = bool(abnormal)
    h, w = gray.shape
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR).astype(np.float32)
    cam = np.clip(np.asarray(cam, np.float32), 0, 1)
    heat = cv2.applyColorMap(np.uint8(cam * 255), cv2.COLORMAP_JET).astype(np.float32)
    weight = (HEAT_ALPHA[abnormal] * cam)[..., None]
    image = np.uint8(np.round(base * (1 - weight) + heat * weight))
    thick = max(1, round(min(h, w) / 150))
    for x0, y0, x1, y1 in boxes:
        # Inset so that a box reaching the film's edge stays a box, not a line along the border.
        x0, y0 = max(x0, thick), max(y0, thick)
        x1, y1 = min(x1 - 1, w - 1 - thick), min(y1 - 1, h - 1 - thick)
        cv2.rectangle(image, (x0, y0), (x1, y1), BOX_COLOUR, thick)

    bar_w = max(12, w // 25)
    ramp = np.linspace(255, 0, h).astype(np.uint8)[:, None].repeat(bar_w, axis=1)
    bar = cv2.applyColorMap(ramp, cv2.COLORMAP_JET)
    margin = np.zeros((h, max(40, w // 8), 3), np.uint8)
    scale = min(0.5, max(0.3, h / 900))
    for text, y in ((top, int(14 * scale / 0.4)), ("0", h - 6)):
        cv2.putText(margin, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (230, 230, 230), 1, cv2.LINE_AA)
    body = np.hstack([image, np.zeros((h, 4, 3), np.uint8), bar, margin])

    lines = [line for line in lines if line]
    if not lines:
        return body
    width = body.shape[1]
    text_thick = 1 if width < 500 else 2
    scale = _text_scale(lines, width, text_thick)
    line_h = int(cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, text_thick)[0][1] * 1.9) + 2
    band = np.full((line_h * len(lines) + 6, width, 3), 20, np.uint8)
    for i, line in enumerate(lines):
        colour = (ABNORMAL_COLOUR if abnormal else NORMAL_COLOUR) if i == len(lines) - 1 else (235, 235, 235)
        cv2.putText(band, line, (6, line_h * (i + 1) - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, text_thick,
                    cv2.LINE_AA)
    return np.vstack([band, body])


def caption(part, router_confidence, p_abnormal, threshold, abnormal, whose=""):
    """The overlay's caption lines: what was routed where, and the decision with its threshold.

    `whose` names the p(abnormal) where a reader could take it for another ("this view ").
    """
    first = f"{part} (router confidence {router_confidence:.2f})"
    if p_abnormal is None:
        return [first, "unscored: the run has no model for this part"]
    if abnormal:
        return [first, f"{whose}p(abnormal) {p_abnormal:.2f} >= threshold {threshold:.3f}: ABNORMAL"]
    return [first, f"{whose}p(abnormal) {p_abnormal:.2f} < threshold {threshold:.3f}: NORMAL"]
