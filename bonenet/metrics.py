"""Metrics as pure functions of arrays, and study aggregation as a function of a table.

Degenerate input (one class only) warns and gives NaN where a metric is undefined, never a crash.
Kappa is scored per study, as MURA defines it.
"""

import warnings

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score

METRIC_KEYS = ("tp", "fn", "fp", "tn", "accuracy", "precision", "sensitivity", "specificity", "f1", "kappa",
               "auroc", "kappa_ci95", "n")


def _ratio(num, den):
    return float(num) / float(den) if den else float("nan")


def kappa(y_true, y_pred):
    """Cohen's kappa; NaN (with a warning) when it is undefined, e.g. one class everywhere."""
    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    if len(y_true) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = cohen_kappa_score(y_true, y_pred, labels=[0, 1])
    if not np.isfinite(value):
        warnings.warn("kappa is undefined when both raters use one class only; reporting NaN", stacklevel=2)
        return float("nan")
    return float(value)


def auroc(y_true, y_score):
    """Area under the ROC curve; NaN (with a warning) when only one class is present."""
    y_true = np.asarray(y_true, int)
    if len(np.unique(y_true)) < 2:
        warnings.warn("AUROC is undefined with a single class; reporting NaN", stacklevel=2)
        return float("nan")
    return float(roc_auc_score(y_true, np.asarray(y_score, float)))


def kappa_ci(y_true, y_pred, n_boot=1000, seed=0, level=0.95):
    """Percentile bootstrap confidence interval for kappa, resampling the given units (studies).

    Returns:
        [lo, hi], or [NaN, NaN] when kappa is undefined in every resample.
    """
    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    if len(y_true) == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y_true), (n_boot, len(y_true)))
    # Kappa from the confusion counts of every resample at once; for binary labels this is exactly
    # sklearn's cohen_kappa_score, without a Python loop over thousands of resamples.
    t, p = y_true[idx].astype(bool), y_pred[idx].astype(bool)
    n = float(len(y_true))
    tp, tn = (t & p).sum(axis=1), (~t & ~p).sum(axis=1)
    pos_t, pos_p = t.sum(axis=1), p.sum(axis=1)
    po = (tp + tn) / n
    pe = (pos_t * pos_p + (n - pos_t) * (n - pos_p)) / n**2
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (po - pe) / (1 - pe)
    values = values[np.isfinite(values)]
    if not len(values):
        return [float("nan"), float("nan")]
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def binary_metrics(y_true, y_score, threshold=0.5, n_boot=1000, seed=0):
    """Confusion counts and the usual rates for scores thresholded at `threshold` (score ≥ t ⇒ 1).

    Returns:
        A dict with the keys of `METRIC_KEYS`; undefined rates are NaN.
    """
    y_true = np.asarray(y_true, int)
    y_score = np.asarray(y_score, float)
    if y_true.shape != y_score.shape:
        raise ValueError(f"y_true and y_score differ in shape: {y_true.shape} vs {y_score.shape}")
    if len(y_true) == 0:
        warnings.warn("no samples to score; reporting NaN", stacklevel=2)
        nan = float("nan")
        return {"tp": 0, "fn": 0, "fp": 0, "tn": 0, "accuracy": nan, "precision": nan, "sensitivity": nan,
                "specificity": nan, "f1": nan, "kappa": nan, "auroc": nan, "kappa_ci95": [nan, nan], "n": 0}
    y_pred = (y_score >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel())
    precision, sensitivity = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "tp": tp, "fn": fn, "fp": fp, "tn": tn,
        "accuracy": _ratio(tp + tn, len(y_true)),
        "precision": precision,
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "kappa": kappa(y_true, y_pred),
        "auroc": auroc(y_true, y_score),
        "kappa_ci95": kappa_ci(y_true, y_pred, n_boot=n_boot, seed=seed),
        "n": int(len(y_true)),
    }


def aggregate_studies(images, prob_columns):
    """Combines image predictions into study predictions.

    A study's part is the argmax of the mean router softmax over its images; its score is the mean
    of its images' p(abnormal).

    Args:
        images: table with `study`, `part_true`, `label`, `score` and the router probability columns.
        prob_columns: {part: column of the router's probability for that part}.

    Returns:
        One row per study: `study`, `part_true`, `part_pred`, `label`, `score`, `router_confidence`.
    """
    parts = list(prob_columns)
    grouped = images.groupby("study", sort=True)
    mean_probs = grouped[[prob_columns[p] for p in parts]].mean()
    studies = grouped.agg(part_true=("part_true", "first"), label=("label", "first"), score=("score", "mean"))
    studies["part_pred"] = [parts[i] for i in mean_probs.to_numpy().argmax(axis=1)]
    studies["router_confidence"] = mean_probs.to_numpy().max(axis=1)
    return studies.reset_index()[["study", "part_true", "part_pred", "label", "score", "router_confidence"]]


def tune_threshold(y_true, y_score):
    """The score threshold that maximises kappa (ties: the one nearest 0.5). For use on a hold-out only."""
    y_true, y_score = np.asarray(y_true, int), np.asarray(y_score, float)
    if len(np.unique(y_true)) < 2:
        warnings.warn("cannot tune a threshold on a single class; keeping 0.5", stacklevel=2)
        return 0.5
    candidates = np.unique(np.concatenate([y_score, [0.5]]))
    best, best_t = -np.inf, 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in candidates:
            k = cohen_kappa_score(y_true, (y_score >= t).astype(int), labels=[0, 1])
            if np.isfinite(k) and (k > best + 1e-12 or (abs(k - best) <= 1e-12 and abs(t - 0.5) < abs(best_t - 0.5))):
                best, best_t = k, float(t)
    return best_t


def per_group(table, group_column, parts, threshold=0.5, n_boot=1000, seed=0):
    """`binary_metrics` for each part (rows whose `group_column` is that part) and overall.

    Args:
        table: rows with `label`, `score` and `group_column`.
        threshold: a number, or {part: threshold}; overall then uses each row's own part threshold.
    """
    thresholds = threshold if isinstance(threshold, dict) else {p: threshold for p in parts}
    out = {}
    for part in parts:
        rows = table[table[group_column] == part]
        if len(rows):
            out[part] = binary_metrics(rows["label"], rows["score"], thresholds.get(part, 0.5), n_boot, seed)
    row_t = table[group_column].map(lambda p: thresholds.get(p, 0.5)).to_numpy(float)
    # Shifting each score by its own threshold lets one overall cut at 0.5 apply per-part thresholds.
    shifted = pd.Series(table["score"].to_numpy(float) - row_t + 0.5)
    out["overall"] = binary_metrics(table["label"], shifted, 0.5, n_boot, seed)
    # AUROC does not depend on thresholds; score it on the raw scores.
    out["overall"]["auroc"] = auroc(table["label"], table["score"]) if len(table) else float("nan")
    return out
