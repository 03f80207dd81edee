"""Metrics as pure functions of arrays (study aggregation lives in `bonenet.scoring.study`).

Degenerate input (one class only) warns and gives NaN where a metric is undefined, never a crash.
Kappa is scored per study, as MURA defines it.
"""

import warnings

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

from bonenet.configs import DEFAULT_THRESHOLD, N_BOOT

KAPPA_UNDEFINED = "kappa is undefined when both raters use one class only; reporting NaN"
AUROC_UNDEFINED = "AUROC is undefined with a single class; reporting NaN"

METRIC_KEYS = ("tp", "fn", "fp", "tn", "accuracy", "precision", "sensitivity", "specificity", "f1", "kappa",
               "auroc", "kappa_ci95", "auroc_ci95", "n")


def _ratio(num, den):
    return float(num) / float(den) if den else float("nan")


def kappa(y_true, y_pred):
    """Cohen's kappa of binary labels; NaN (with a warning) when it is undefined, e.g. one class everywhere.

    Computed from the confusion counts (exactly scikit-learn's `cohen_kappa_score` for two labels),
    so a degenerate split gives one NaN, not a library warning per call.
    """
    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    if len(y_true) == 0:
        return float("nan")
    value = _kappa_of_counts(np.asarray([[np.sum(y_true & y_pred), np.sum(~y_true.astype(bool) & ~y_pred.astype(bool)),
                                          y_true.sum(), y_pred.sum(), len(y_true)]], float))[0]
    if not np.isfinite(value):
        warnings.warn(KAPPA_UNDEFINED, stacklevel=2)
        return float("nan")
    return float(value)


def _kappa_of_counts(counts):
    """Kappa per row of counts (tp, tn, true positives, predicted positives, n); NaN where undefined."""
    tp, tn, pos_t, pos_p, n = np.asarray(counts, float).T
    with np.errstate(divide="ignore", invalid="ignore"):
        po = (tp + tn) / n
        pe = (pos_t * pos_p + (n - pos_t) * (n - pos_p)) / n**2
        return np.where(pe < 1, (po - pe) / (1 - pe), np.nan)


def auroc(y_true, y_score):
    """Area under the ROC curve; NaN (with a warning) when only one class is present."""
    y_true = np.asarray(y_true, int)
    if len(np.unique(y_true)) < 2:
        warnings.warn(AUROC_UNDEFINED, stacklevel=2)
        return float("nan")
    return float(roc_auc_score(y_true, np.asarray(y_score, float)))


def cluster_ids(n, groups=None):
    """(cluster index per row, number of clusters) of `n` rows: `groups` (patient ids), or each row its own."""
    if n == 0:
        return np.zeros(0, int), 0
    _, cluster = np.unique(np.arange(n) if groups is None else np.asarray(groups), return_inverse=True)
    return cluster, int(cluster.max()) + 1


def bootstrap_interval(per_cluster, statistic, n_boot=N_BOOT, seed=0, level=0.95):
    """Percentile interval of a statistic over cluster resamples: the one bootstrap behind every interval.

    Each resample draws k clusters with replacement; what the statistic needs of it is the sum of
    the drawn clusters' rows of `per_cluster`, so every resample comes at once as one product.

    Args:
        per_cluster: k×… array, each cluster's sums (counts, weighted sums) that the statistic reads.
        statistic: maps the resamples' sums (n_boot×…) to n_boot values; a non-finite value (the
            statistic undefined in that resample) is left out.
        n_boot: resamples; 0 gives no interval. Defaults to `N_BOOT`.

    Returns:
        [lo, hi], or [NaN, NaN] when there is nothing to resample (no rows, `n_boot` 0) or no
        resample defines the statistic.
    """
    per_cluster = np.asarray(per_cluster, float)
    k = len(per_cluster)
    if k == 0 or n_boot <= 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    draws = np.zeros((n_boot, k))
    np.add.at(draws, (np.repeat(np.arange(n_boot), k), rng.integers(0, k, n_boot * k)), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.asarray(statistic(np.tensordot(draws, per_cluster, axes=1)), float)
    values = values[np.isfinite(values)]
    if not len(values):
        return [float("nan"), float("nan")]
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def auroc_ci(y_true, y_score, n_boot=N_BOOT, seed=0, level=0.95, groups=None):
    """Percentile bootstrap confidence interval for the AUROC, resampling clusters of rows as `kappa_ci` does.

    Every resample's AUROC is the Mann-Whitney statistic of its row weights (ties count half),
    exactly sklearn's `roc_auc_score` of the resampled rows. Resamples with one class only are left
    out (their AUROC is undefined).

    Returns:
        [lo, hi], or [NaN, NaN] when no resample has both classes (`bootstrap_interval`).
    """
    y_true, y_score = np.asarray(y_true, int), np.asarray(y_score, float)
    cluster, k = cluster_ids(len(y_true), groups)
    _, level_of = np.unique(y_score, return_inverse=True)  # tied scores share a level
    levels = int(level_of.max()) + 1 if len(y_score) else 0
    # Per cluster and score level: positives and negatives.
    cell = cluster * levels + level_of
    per = np.stack([np.bincount(cell, weights=w, minlength=k * levels).reshape(k, levels)
                    for w in (y_true, 1 - y_true)], axis=1)

    def statistic(sums):
        pos, neg = sums[:, 0], sums[:, 1]
        below = np.cumsum(neg, axis=1) - neg  # negatives scored strictly lower than each level
        pairs = pos.sum(axis=1) * neg.sum(axis=1)
        return np.where(pairs > 0, (pos * (below + 0.5 * neg)).sum(axis=1) / pairs, np.nan)

    return bootstrap_interval(per, statistic, n_boot, seed, level)


def kappa_ci(y_true, y_pred, n_boot=N_BOOT, seed=0, level=0.95, groups=None):
    """Percentile bootstrap confidence interval for kappa, resampling clusters of rows.

    A patient's studies are correlated (MURA valid: 1,199 studies from 783 patients), so with
    `groups` (one patient id per row) whole patients are resampled, a cluster bootstrap; without
    it each row is its own cluster.

    Returns:
        [lo, hi], or [NaN, NaN] when kappa is undefined in every resample (`bootstrap_interval`).
    """
    t, p = np.asarray(y_true, int).astype(bool), np.asarray(y_pred, int).astype(bool)
    cluster, k = cluster_ids(len(t), groups)
    # Per-cluster confusion counts; a resample's counts are the sums over the clusters it drew.
    per = np.stack([np.bincount(cluster, weights=w, minlength=k) for w in (t & p, ~t & ~p, t, p, np.ones_like(t))],
                   axis=1)
    return bootstrap_interval(per, _kappa_of_counts, n_boot, seed, level)


def binary_metrics(y_true, y_score, threshold=DEFAULT_THRESHOLD, n_boot=N_BOOT, seed=0, groups=None):
    """Confusion counts and the usual rates for scores thresholded at `threshold` (score ≥ t ⇒ 1).

    Args:
        threshold: one threshold, or one per row (each study decided by its routed part's).
        groups: cluster ids (patients) for the kappa and AUROC intervals; see `kappa_ci`.

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
                "specificity": nan, "f1": nan, "kappa": nan, "auroc": nan, "kappa_ci95": [nan, nan],
                "auroc_ci95": [nan, nan], "n": 0}
    y_pred = (y_score >= np.asarray(threshold, float)).astype(int)
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
        "kappa_ci95": kappa_ci(y_true, y_pred, n_boot=n_boot, seed=seed, groups=groups),
        "auroc_ci95": auroc_ci(y_true, y_score, n_boot=n_boot, seed=seed, groups=groups),
        "n": int(len(y_true)),
    }


def tune_threshold(y_true, y_score):
    """The score threshold that maximises kappa (ties: the one nearest the default). For use on a hold-out only.

    Raises:
        ValueError: the scores cannot choose a threshold (one class only, or no studies); the
            message says why, for the manifest.
    """
    y_true, y_score = np.asarray(y_true, int), np.asarray(y_score, float)
    classes = np.unique(y_true)
    if len(classes) < 2:
        noun = "study" if len(y_true) == 1 else "studies"
        raise ValueError(f"the hold-out has {len(y_true)} {noun}, of one class only ({classes.tolist()})")
    candidates = np.unique(np.concatenate([y_score, [DEFAULT_THRESHOLD]]))
    pred = y_score[None, :] >= candidates[:, None]  # one row per candidate threshold
    truth = y_true.astype(bool)[None, :]
    counts = np.stack([(pred & truth).sum(1), (~pred & ~truth).sum(1), np.full(len(candidates), truth.sum()),
                       pred.sum(1), np.full(len(candidates), len(y_true))], axis=1)
    # Thresholds that call every study one class make kappa undefined; they are never chosen.
    kappas = np.nan_to_num(_kappa_of_counts(counts), nan=-np.inf)
    best = kappas.max()
    tied = np.flatnonzero(kappas >= best - 1e-12)
    return float(candidates[tied[np.argmin(np.abs(candidates[tied] - DEFAULT_THRESHOLD))]])


def per_group(table, group_column, parts, n_boot=N_BOOT, seed=0):
    """`binary_metrics` for each part (rows whose `group_column` is that part) and overall.

    Args:
        table: rows with `label`, `score`, `threshold` (the threshold that decides that row) and
            `group_column`; a `patient` column, when present, clusters the kappa bootstrap.
    """
    out = {}
    for part in [*parts, "overall"]:
        rows = table if part == "overall" else table[table[group_column] == part]
        if len(rows) or part == "overall":  # overall always exists; NaN (with a warning) when empty
            out[part] = binary_metrics(rows["label"], rows["score"], rows["threshold"].to_numpy(float), n_boot, seed,
                                       groups=rows["patient"].to_numpy() if "patient" in rows else None)
    return out


MISSING = "—"


def figure_text(value, digits=3):
    """A figure as every output prints it: to `digits` places, or "—" when there is none (None or NaN)."""
    if value is None or not np.isfinite(value):
        return MISSING
    return f"{value:.{digits}f}"


def interval_text(pair, digits=2):
    """A 95% interval as every output prints it, "[lo, hi]" to `digits` places (a bootstrap supports no
    more), or "—" when there is none."""
    if not pair or pair[0] is None or not np.isfinite(pair[0]):
        return MISSING
    return f"[{pair[0]:.{digits}f}, {pair[1]:.{digits}f}]"


def with_interval(value, pair):
    """"0.742 [0.68, 0.81]": a figure and its interval (`figure_text`, `interval_text`); the figure alone
    when it has no interval."""
    interval = interval_text(pair)
    return figure_text(value) if interval == MISSING else f"{figure_text(value)} {interval}"
