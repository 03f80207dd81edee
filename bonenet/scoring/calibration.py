"""Calibrated probabilities: one temperature per model, fitted on the training hold-out, and the expected
calibration error (ECE) that says whether a p(abnormal) of 0.8 means about 80%.

Temperature scaling (Guo et al., 2017) divides a model's logits by one number T, fitted by maximum
likelihood. The models end in a softmax, whose log is their logits up to a constant, so the calibrated
probabilities are softmax(log p / T): T > 1 softens an over-confident model, T < 1 sharpens an
under-confident one. It is monotone, so AUROC and every image's router vote stay as they were.

A temperature is honest only out of sample: the hold-out that fits it also chose the epoch, and a
small one fits noise (a T of 0.05 from 12 studies pushes every probability to 0 or 1). So a
temperature is fitted only from `MIN_PER_CLASS` units of each class, under a prior on log T, and
kept only when it lowers the NLL in a patient-grouped cross-validation of the hold-out
(`fit_temperature`); otherwise the model stays uncalibrated and says why.

A part model is calibrated where its output is read: the study's p(abnormal), the mean of its images'
(`bonenet.scoring.study`), fitted on the hold-out's studies. The router is calibrated per image.
"""

import numpy as np
from scipy.optimize import minimize_scalar

from bonenet.configs import N_BOOT
from bonenet.scoring.metrics import bootstrap_interval, cluster_ids

EPS = 1e-7  # probabilities are clipped to [EPS, 1] before the log: a saturated softmax gives exact 0
N_BINS = 10
METHOD = "temperature"
# Fewer hold-out studies of either class than this (images, for the router) fit a temperature or a
# threshold to noise: neither is fitted, and the manifest says why.
MIN_PER_CLASS = 10
# A Gaussian prior on log T, N(0, LOG_T_PRIOR_SD²): a hold-out of n studies must move log T against
# it, so a small hold-out cannot push T to an extreme (a T of 0.05 multiplies logits by 20).
LOG_T_PRIOR_SD = 0.5
CV_FOLDS = 5  # patient-grouped folds of the hold-out that check a temperature out of sample
T_BOUNDS = (0.05, 20.0)  # the search interval; the prior keeps a fit well inside it


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


def class_counts(labels, num_classes=2):
    """How many of each class `labels` holds (a list of `num_classes` ints)."""
    return np.bincount(np.asarray(labels, int), minlength=num_classes).tolist()


def _units(labels, groups):
    """One label per unit that `nll` scores: per study with `groups`, else per row."""
    labels = np.asarray(labels, int)
    return labels if groups is None else _by_group(labels.astype(float), groups).round().astype(int)


def _map_temperature(probs, labels, groups=None):
    """The temperature maximising the hold-out likelihood times the prior on log T."""
    n = len(_units(labels, groups))
    penalty = 1.0 / (2 * LOG_T_PRIOR_SD**2 * n)  # the prior's log density per unit, as `nll` is a mean
    found = minimize_scalar(lambda log_t: nll(probs, labels, np.exp(log_t), groups) + penalty * log_t**2,
                            method="bounded", bounds=tuple(np.log(T_BOUNDS)))
    return float(np.exp(found.x))


def _folds(clusters, n, k, seed):
    """Fold index for each of `n` rows: whole clusters (patients) per fold, clusters shuffled with `seed`."""
    cluster, n_clusters = cluster_ids(n, clusters)
    order = np.random.default_rng(seed).permutation(n_clusters)
    return (np.argsort(order) % k)[cluster]


def cross_validated_nll(probs, labels, groups=None, clusters=None, k=CV_FOLDS, seed=0):
    """(NLL without a temperature, NLL with one fitted on the other folds), summed over `k` folds of
    whole clusters, each as a mean per unit: a temperature's effect out of sample."""
    probs, labels = np.asarray(probs), np.asarray(labels, int)
    fold = _folds(clusters if clusters is not None else groups, len(labels), k, seed)
    before = after = 0.0
    units = 0
    for f in range(k):
        test, train = fold == f, fold != f
        if not test.any():
            continue
        g_test = None if groups is None else np.asarray(groups)[test]
        g_train = None if groups is None else np.asarray(groups)[train]
        fitted = len(np.unique(labels[train])) > 1
        t = _map_temperature(probs[train], labels[train], g_train) if fitted else None
        n = len(_units(labels[test], g_test))
        before += n * nll(probs[test], labels[test], None, g_test)
        after += n * nll(probs[test], labels[test], t, g_test)
        units += n
    return before / units, after / units


def fit_temperature(probs, labels, groups=None, clusters=None, seed=0):
    """A temperature for a model from its hold-out, kept only where it helps out of sample.

    Needs `MIN_PER_CLASS` units (studies with `groups`, else images) of every class the hold-out
    has, and at least two classes. The temperature is the MAP estimate under a prior on log T
    (`LOG_T_PRIOR_SD`); it is kept only when `CV_FOLDS`-fold cross-validation over `clusters`
    (patients; studies or rows when None) shows it lowers the NLL, since the same hold-out chose the
    epoch and its own fit is optimistic.

    Args:
        probs: n×k probabilities, or p(abnormal) (n,).
        labels: n class indices.
        groups: study ids: calibrate each study's mean probability (the study rule).
        clusters: patient ids, so a patient's studies never straddle two folds.

    Returns:
        {"method", "temperature", "fitted_on", "n", "unit", "cv_nll_before", "cv_nll_after", "nll_before",
        "nll_after"[, "ece_before", "ece_after"]}, or {"method", "temperature": None, "reason", ...} when the
        hold-out is too small or the temperature would not lower the cross-validated NLL.
    """
    labels = np.asarray(labels, int)
    units = _units(labels, groups)
    unit = "studies" if groups is not None else "images"
    counts = [c for c in np.bincount(units) if c] if len(units) else []
    base = {"method": METHOD, "n": int(len(units)), "unit": unit}
    if len(counts) < 2 or min(counts) < MIN_PER_CLASS:
        return {**base, "temperature": None,
                "reason": f"the hold-out has {len(units)} {unit} ({'/'.join(map(str, np.bincount(units)))} per "
                          f"class); a temperature needs two classes and at least {MIN_PER_CLASS} {unit} of each"}
    cv_before, cv_after = cross_validated_nll(probs, labels, groups, clusters, seed=seed)
    t = _map_temperature(probs, labels, groups)
    base.update(cv_nll_before=cv_before, cv_nll_after=cv_after, cv_folds=CV_FOLDS,
                nll_before=nll(probs, labels, None, groups), nll_after=nll(probs, labels, t, groups))
    if not cv_after < cv_before:
        return {**base, "temperature": None, "fitted": round(t, 6),
                "reason": f"a temperature ({t:.3g}) did not lower the cross-validated hold-out NLL "
                          f"({cv_after:.4f} vs {cv_before:.4f} without it, {CV_FOLDS} folds by patient)"}
    out = {**base, "temperature": round(t, 6), "fitted_on": f"the training hold-out ({len(units)} {unit})"}
    if np.asarray(probs).ndim == 1:
        before = np.asarray(probs, float)
        after = apply_temperature(probs, t).astype(float)
        if groups is not None:
            before, after = _by_group(before, groups), _by_group(after, groups)
        out.update(ece_before=ece(units, before), ece_after=ece(units, after))
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


def ece_ci(labels, scores, groups=None, n_boot=N_BOOT, seed=0, level=0.95):
    """Percentile bootstrap interval of `ece`, resampling whole clusters (patients) (`bonenet.scoring.metrics.bootstrap_interval`).

    Returns:
        [lo, hi], or [NaN, NaN] for no rows or no resamples.
    """
    labels, scores = np.asarray(labels, float), np.asarray(scores, float)
    cluster, k = cluster_ids(len(labels), groups)
    n_bins = N_BINS
    bins = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], scores)
    cell = cluster * n_bins + bins
    # Per cluster and bin: score sum, positives, count; a resample's are the sums over the clusters it drew.
    per = np.stack([np.bincount(cell, weights=w, minlength=k * n_bins).reshape(k, n_bins)
                    for w in (scores, labels, np.ones_like(labels))], axis=1)

    def statistic(sums):
        score_sum, positives, count = sums[:, 0], sums[:, 1], sums[:, 2]
        return np.abs(positives - score_sum).sum(axis=1) / count.sum(axis=1)

    return bootstrap_interval(per, statistic, n_boot, seed, level)
