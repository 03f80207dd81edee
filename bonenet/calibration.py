"""Calibrated probabilities: one temperature per model, fitted on the training hold-out, and the expected
calibration error (ECE) that says whether a p(abnormal) of 0.8 means about 80%.

Temperature scaling (Guo et al., 2017) divides a model's logits by one number T, fitted by maximum
likelihood. The models end in a softmax, whose log is their logits up to a constant, so the calibrated
probabilities are softmax(log p / T): T > 1 softens an over-confident model, T < 1 sharpens an
under-confident one. It is monotone, so AUROC and every image's router vote stay as they were, and a
threshold maps one to one (`calibrated_threshold`).

A part model is calibrated where its output is read: the study's p(abnormal), the mean of its images'
(`bonenet.study`), fitted on the hold-out's studies. The router is calibrated per image.
"""

import numpy as np
from scipy.optimize import minimize_scalar

EPS = 1e-7  # probabilities are clipped to [EPS, 1] before the log: a saturated softmax gives exact 0
N_BINS = 10
METHOD = "temperature"
MIN_STUDIES = 10  # fewer hold-out studies than this fit a temperature to noise
T_BOUNDS = (0.05, 20.0)


def apply_temperature(probs, temperature):
    """softmax(log p / T) of each row of `probs` (n×k), or of [1 - p, p] for p(abnormal) (n,).

    Returns float32 of the input's shape; `temperature` None returns the probabilities unchanged.
    """
    probs = np.asarray(probs, np.float32)
    if temperature is None:
        return probs
    rows = np.stack([1 - probs, probs], axis=-1) if probs.ndim == 1 else probs
    logits = np.log(np.clip(rows.astype(np.float64), EPS, 1.0)) / float(temperature)
    logits -= logits.max(axis=-1, keepdims=True)
    out = np.exp(logits)
    out = (out / out.sum(axis=-1, keepdims=True)).astype(np.float32)
    return out[..., 1] if probs.ndim == 1 else out


def calibrated_threshold(threshold, temperature):
    """Where an uncalibrated threshold on one image's p(abnormal) lies on the calibrated scale."""
    return float(apply_temperature(np.asarray([threshold], np.float32), temperature)[0])


def _by_group(values, groups):
    """Row means of `values` per group, in the order of `np.unique(groups)`."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.zeros((inverse.max() + 1, *values.shape[1:]))
    np.add.at(sums, inverse, values)
    return sums / np.bincount(inverse).reshape(-1, *[1] * (values.ndim - 1))


def nll(probs, labels, temperature=None, groups=None):
    """Mean negative log-likelihood of `labels` under `probs` calibrated with `temperature`.

    Args:
        probs: n×k probabilities, or p(abnormal) (n,).
        labels: n class indices (the group's label on each of its rows).
        groups: study ids: score each study's mean probability (the study rule) instead of each row.
    """
    p = apply_temperature(probs, temperature).astype(np.float64)
    p = np.stack([1 - p, p], axis=-1) if p.ndim == 1 else p
    labels = np.asarray(labels, int)
    if groups is not None:
        p, labels = _by_group(p, groups), _by_group(labels.astype(float), groups).round().astype(int)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], EPS, 1.0))))


def fit_temperature(probs, labels, groups=None):
    """The temperature that minimises `nll` on a hold-out, and what it did there.

    Returns:
        {"method", "temperature", "fitted_on", "n", "nll_before", "nll_after"[, "ece_before", "ece_after"]}, or
        {"method", "temperature": None, "reason"} when the hold-out cannot fit one (one class only, or
        fewer than `MIN_STUDIES` studies).
    """
    labels = np.asarray(labels, int)
    n = len(np.unique(groups)) if groups is not None else len(labels)
    classes = np.unique(labels)
    if len(classes) < 2 or n < MIN_STUDIES:
        why = (f"the hold-out has {n} {'studies' if groups is not None else 'images'}, of classes "
               f"{classes.tolist()}; calibration needs two classes and at least {MIN_STUDIES}")
        return {"method": METHOD, "temperature": None, "reason": why}
    found = minimize_scalar(lambda log_t: nll(probs, labels, np.exp(log_t), groups), method="bounded",
                            bounds=tuple(np.log(T_BOUNDS)))
    t = float(np.exp(found.x))
    out = {"method": METHOD, "temperature": round(t, 6), "fitted_on": "the training hold-out",
           "n": int(n), "unit": "studies" if groups is not None else "images",
           "nll_before": nll(probs, labels, None, groups), "nll_after": nll(probs, labels, t, groups)}
    if np.asarray(probs).ndim == 1:
        before = _by_group(np.asarray(probs, float), groups) if groups is not None else np.asarray(probs, float)
        after = apply_temperature(probs, t).astype(float)
        after = _by_group(after, groups) if groups is not None else after
        truth = _by_group(labels.astype(float), groups).round() if groups is not None else labels
        out.update(ece_before=ece(truth, before), ece_after=ece(truth, after))
    return out


def _bin_sums(labels, scores, n_bins):
    """Per uniform bin: the scores' sum, the positives and the count (sklearn's `calibration_curve` bins)."""
    bins = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(bins[1:-1], scores)
    return np.stack([np.bincount(ids, weights=scores, minlength=n_bins),
                     np.bincount(ids, weights=labels, minlength=n_bins),
                     np.bincount(ids, minlength=n_bins).astype(float)])


def ece(labels, scores, n_bins=N_BINS):
    """Expected calibration error of binary `scores`: Σ_bins (n_b / n) |positives rate − mean score|, over
    `n_bins` equal-width bins, the binning of scikit-learn's `calibration_curve`. NaN for no rows."""
    labels, scores = np.asarray(labels, float), np.asarray(scores, float)
    if not len(labels):
        return float("nan")
    score_sum, positives, _ = _bin_sums(labels, scores, n_bins)
    return float(np.abs(positives - score_sum).sum() / len(labels))


def ece_ci(labels, scores, groups=None, n_bins=N_BINS, n_boot=1000, seed=0, level=0.95):
    """Percentile bootstrap interval of `ece`, resampling whole clusters (patients) as `bonenet.metrics.kappa_ci`.

    Returns:
        [lo, hi], or [NaN, NaN] for no rows.
    """
    labels, scores = np.asarray(labels, float), np.asarray(scores, float)
    if not len(labels):
        return [float("nan"), float("nan")]
    _, cluster = np.unique(np.arange(len(labels)) if groups is None else np.asarray(groups), return_inverse=True)
    k = int(cluster.max()) + 1
    bins = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], scores)
    cell = cluster * n_bins + bins
    # Per cluster and bin: score sum, positives, count; a resample's are the sums over the clusters it drew.
    per = np.stack([np.bincount(cell, weights=w, minlength=k * n_bins).reshape(k, n_bins)
                    for w in (scores, labels, np.ones_like(labels))])
    rng = np.random.default_rng(seed)
    draws = np.zeros((n_boot, k))
    np.add.at(draws, (np.repeat(np.arange(n_boot), k), rng.integers(0, k, n_boot * k)), 1)
    score_sum, positives, count = (draws @ per[i] for i in range(3))
    values = np.abs(positives - score_sum).sum(axis=1) / count.sum(axis=1)
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]
