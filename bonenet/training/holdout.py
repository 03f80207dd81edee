"""What the training hold-out decides for a model: its hold-out figures, its temperature and a part's threshold.

The model runs over the hold-out once (`holdout_outputs`); every figure below is computed from
those probabilities. A temperature or a tuned threshold is only fitted where the hold-out has
at least `bonenet.scoring.calibration.MIN_PER_CLASS` studies of each class (images, for the router), and a
temperature is only kept where it lowers the cross-validated hold-out NLL
(`bonenet.scoring.calibration.fit_temperature`); otherwise the manifest records why not.
"""

import keras
import numpy as np

from bonenet.configs import DEFAULT_THRESHOLD
from bonenet.scoring.calibration import MIN_PER_CLASS, apply_temperature, class_counts, fit_temperature
from bonenet.scoring.metrics import tune_threshold
from bonenet.scoring.study import aggregate_studies


def holdout_outputs(model, val_ds):
    """(softmax n×k, one-hot labels n×k) of `model` over the hold-out dataset, in dataset order.

    Computed eagerly: `predict` under a multi-worker strategy would gather each worker's shard in
    no fixed order.
    """
    probs, labels = [], []
    for x, y in val_ds:
        probs.append(np.asarray(model(x, training=False), np.float32))
        labels.append(np.asarray(y, np.float32))
    return np.concatenate(probs), np.concatenate(labels)


def holdout_figures(probs, onehot):
    """The compiled figures (`bonenet.models.efficientnet.compile_model`) of hold-out outputs: loss, accuracy, and AUC
    for two classes, computed by the same Keras loss and metrics as `Model.evaluate` would."""
    figures = {"loss": float(np.mean(keras.losses.categorical_crossentropy(onehot, probs))),
               "accuracy": _metric(keras.metrics.CategoricalAccuracy(), onehot, probs)}
    if probs.shape[-1] == 2:
        figures["auc"] = _metric(keras.metrics.AUC(), onehot, probs)
    return figures


def _metric(metric, onehot, probs):
    metric.update_state(onehot, probs)
    return float(metric.result())


def _hold_out_studies(scores, kept, val_images, part):
    """The hold-out's studies under the study rule, scored with `scores` (one per image in `kept`)."""
    if len(scores) != len(kept):
        raise ValueError(f"{part}: {len(scores)} hold-out scores for {len(kept)} hold-out images")
    table = val_images.set_index("path").loc[kept, ["study", "label"]].reset_index()
    table = table.assign(part_true=part, **{f"p_{part}": 1.0, f"s_{part}": np.asarray(scores, float)})
    return aggregate_studies(table, [part], {part: (DEFAULT_THRESHOLD, "default")}, oracle=True)


def tune_on_holdout(scores, kept, val_images, part):
    """The study-level threshold maximising kappa on the training hold-out (never an evaluated split).

    Studies are scored by the study rule (`bonenet.scoring.study`). Below `MIN_PER_CLASS` studies of either
    class a threshold would be tuned to noise, so none is.

    Args:
        scores: p(abnormal) for the hold-out images `kept` (those that decoded), in order.
        kept: their paths.
        val_images: the hold-out image table.
        part: the part.

    Returns:
        {"threshold": float, "studies": n} or {"threshold": None, "reason": why tuning was not
        possible, "studies": n}.
    """
    studies = _hold_out_studies(scores, kept, val_images, part)
    counts = class_counts(studies["label"])
    if min(counts) < MIN_PER_CLASS:
        return {"threshold": None, "studies": len(studies),
                "reason": f"the hold-out has {counts[0]} normal and {counts[1]} abnormal studies; a tuned "
                          f"threshold needs at least {MIN_PER_CLASS} of each"}
    try:
        return {"threshold": tune_threshold(studies["label"], studies["score"]), "studies": len(studies)}
    except ValueError as exc:
        return {"threshold": None, "reason": str(exc), "studies": len(studies)}


def calibrate_on_holdout(probs, kept, examples):
    """The model's temperature (`bonenet.scoring.calibration.fit_temperature`) on the hold-out images `kept`.

    The router is calibrated per image; a part model on its studies' mean p(abnormal), the
    number the study rule reads. Cross-validation folds hold whole patients.
    """
    label_of = dict(zip(examples.val_paths, examples.val_labels, strict=True))
    labels = np.asarray([label_of[p] for p in kept], int)
    rows = examples.val_images.set_index("path").loc[kept]
    patients = rows["patient"].to_numpy() if "patient" in rows else None
    if examples.key == "router":
        return fit_temperature(probs, labels, clusters=patients)
    return fit_temperature(probs[:, 1], labels, groups=rows["study"].to_numpy(), clusters=patients)


def decide_on_holdout(key, probs, kept, examples):
    """Everything the hold-out decides for model `key`: (calibration, a part's tuning or None).

    The threshold is tuned on the scores it will decide: calibrated where a temperature was kept.
    """
    calibration = calibrate_on_holdout(probs, kept, examples)
    if key == "router":
        return calibration, None
    calibrated = apply_temperature(probs[:, 1], calibration["temperature"])
    return calibration, tune_on_holdout(calibrated, kept, examples.val_images, key)


def summary_line(key, entry):
    """One line after a model has trained (`entry`, its `ModelRecord`): its hold-out figures and, for a part,
    its threshold."""
    holdout = entry.holdout
    text = f"{key}: {entry.epochs_run} epoch(s); hold-out loss {holdout.get('loss', float('nan')):.3f}, " \
           f"accuracy {holdout.get('accuracy', float('nan')):.3f}"
    if "auc" in holdout:
        text += f", AUC {holdout['auc']:.3f}"
    members = entry.members
    if len(members) > 1:
        figure = "auc" if "auc" in holdout else "accuracy"
        text += (f" for the mean of {len(members)} members (each alone: "
                 f"{', '.join(format(m['holdout'][figure], '.3f') for m in members)})")
    tuning = entry.tuning
    if tuning is not None:
        text += (f"; threshold {tuning['threshold']:.3f} tuned on {tuning['studies']} hold-out studies"
                 if tuning["threshold"] is not None else f"; threshold 0.5 (tuning not possible: {tuning['reason']})")
    calibration = entry.calibration
    if calibration.get("temperature") is not None:
        text += (f"; temperature {calibration['temperature']:.2f} (cross-validated hold-out NLL "
                 f"{calibration['cv_nll_before']:.3f} → {calibration['cv_nll_after']:.3f})")
    elif calibration:
        text += f"; not calibrated ({calibration['reason']})"
    return text
