import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from bonenet.scoring.metrics import binary_metrics, kappa_ci, per_group, tune_threshold


def test_binary_metrics_known_answer():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    s = np.array([0.9, 0.8, 0.3, 0.1, 0.6, 0.2, 0.4, 0.7])
    m = binary_metrics(y, s, 0.5, n_boot=200)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 1, 3)
    assert m["accuracy"] == 0.75 and m["precision"] == 0.75 and m["sensitivity"] == 0.75 and m["specificity"] == 0.75
    assert m["f1"] == pytest.approx(0.75)
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y, (s >= 0.5).astype(int)))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s))
    lo, hi = m["kappa_ci95"]
    assert lo <= m["kappa"] <= hi and m["n"] == 8


def test_threshold_is_inclusive():
    assert binary_metrics([1, 0], [0.5, 0.49], 0.5, n_boot=0)["tp"] == 1


def test_single_class_warns_and_gives_nan_without_crashing():
    with pytest.warns(UserWarning):
        m = binary_metrics([0, 0, 0], [0.1, 0.2, 0.3], 0.5, n_boot=50)
    assert np.isnan(m["auroc"]) and np.isnan(m["kappa"]) and np.isnan(m["sensitivity"]) and np.isnan(m["precision"])
    assert m["specificity"] == 1.0 and m["tn"] == 3


def test_kappa_ci_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.where(rng.random(200) < 0.8, y, 1 - y)
    a, b = kappa_ci(y, p, 1000, seed=3), kappa_ci(y, p, 1000, seed=3)
    assert a == b and a[0] < cohen_kappa_score(y, p) < a[1] and a[1] - a[0] < 0.4


def test_each_row_is_decided_by_its_own_threshold_overall_too():
    table = pd.DataFrame({"part": ["A", "A", "B", "B"], "label": [1, 0, 1, 0], "score": [0.3, 0.1, 0.9, 0.7],
                          "threshold": [0.2, 0.2, 0.8, 0.8]})
    out = per_group(table, "part", ["A", "B"], n_boot=10)
    assert out["A"]["accuracy"] == 1.0 and out["B"]["accuracy"] == 1.0 and out["overall"]["accuracy"] == 1.0
    assert out["overall"]["auroc"] == pytest.approx(roc_auc_score(table["label"], table["score"]))


def test_cluster_bootstrap_resamples_patients_and_is_wider_for_correlated_studies():
    rng = np.random.default_rng(1)
    y = np.repeat(rng.integers(0, 2, 60), 3)  # 60 patients with 3 studies each, all alike
    p = np.repeat(np.where(rng.random(60) < 0.8, y[::3], 1 - y[::3]), 3)
    patients = np.repeat(np.arange(60), 3)
    naive, cluster = kappa_ci(y, p, 2000, seed=0), kappa_ci(y, p, 2000, seed=0, groups=patients)
    # Copies of one patient carry no new information: the cluster interval is as wide as 60 studies'.
    assert cluster[1] - cluster[0] > 1.4 * (naive[1] - naive[0])
    alone = kappa_ci(y[::3], p[::3], 2000, seed=0)
    assert cluster[1] - cluster[0] == pytest.approx(alone[1] - alone[0], rel=0.25)


def test_tuning_a_single_class_hold_out_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="one class only"):
        tune_threshold([0, 0, 0], [0.1, 0.2, 0.3])


def test_tuned_threshold_maximises_kappa():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.05, 0.1, 0.15, 0.2, 0.25, 0.3])
    t = tune_threshold(y, s)
    assert 0.15 < t <= 0.2
    assert binary_metrics(y, s, t, n_boot=0)["kappa"] == 1.0


def test_vectorised_bootstrap_matches_sklearn_resample_by_resample():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 40)
    p = np.where(rng.random(40) < 0.7, y, 1 - y)
    idx = np.random.default_rng(9).integers(0, 40, (300, 40))
    loop = [cohen_kappa_score(y[r], p[r], labels=[0, 1]) for r in idx]
    loop = np.array([v for v in loop if np.isfinite(v)])
    assert kappa_ci(y, p, 300, seed=9) == pytest.approx([np.percentile(loop, 2.5), np.percentile(loop, 97.5)])


def test_auroc_ci_brackets_the_auroc_and_resamples_whole_clusters():
    from bonenet.scoring.metrics import auroc, auroc_ci

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    score = y * 0.6 + rng.uniform(0, 1, 100)
    lo, hi = auroc_ci(y, score, n_boot=400, seed=1)
    assert lo < auroc(y, score) < hi and 0.5 < lo and hi <= 1
    # Each row doubled in one cluster: the same information, so the same interval as single rows.
    doubled = auroc_ci(np.repeat(y, 2), np.repeat(score, 2), n_boot=400, seed=1, groups=np.repeat(np.arange(100), 2))
    assert doubled == pytest.approx([lo, hi], abs=1e-9)
    assert np.isnan(auroc_ci([1, 1, 1], [0.2, 0.5, 0.9], n_boot=50)).all()  # one class: undefined
