"""Temperature scaling and the expected calibration error."""

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from bonenet.scoring.calibration import (
    LOG_T_PRIOR_SD,
    MIN_PER_CLASS,
    T_BOUNDS,
    apply_temperature,
    cross_validated_nll,
    ece,
    ece_ci,
    fit_temperature,
    nll,
)


def _logit(p):
    return np.log(p) - np.log1p(-p)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _calibrated_draw(n, seed):
    """Well-calibrated p(abnormal) and labels drawn from them: label ~ Bernoulli(p)."""
    rng = np.random.default_rng(seed)
    p = _sigmoid(rng.normal(0, 1.2, n))
    return p, (rng.random(n) < p).astype(int)


def test_an_over_confident_model_has_a_higher_ece_and_a_temperature_fitted_on_a_hold_out_brings_it_down():
    # The model's logits scaled by 4: the over-confident model of the issue.
    fit_p, fit_y = _calibrated_draw(4000, seed=0)
    test_p, test_y = _calibrated_draw(4000, seed=1)
    confident = lambda p: _sigmoid(4 * _logit(p))  # noqa: E731
    assert ece(test_y, confident(test_p)) > ece(test_y, test_p) + 0.1
    fitted = fit_temperature(confident(fit_p), fit_y)
    assert fitted["temperature"] == pytest.approx(4, rel=0.1)  # it finds the scale that was applied
    assert fitted["nll_after"] < fitted["nll_before"] and fitted["ece_after"] < fitted["ece_before"]
    assert fitted["cv_nll_after"] < fitted["cv_nll_before"]  # kept because it helps out of sample
    after = apply_temperature(confident(test_p), fitted["temperature"])  # held-out data, never fitted on
    assert ece(test_y, after) < 0.03 < 0.1 < ece(test_y, confident(test_p))
    assert nll(confident(test_p), test_y, fitted["temperature"]) < nll(confident(test_p), test_y)


def test_temperature_scaling_is_softmax_of_log_p_over_t_and_keeps_the_order():
    probs = np.array([[0.7, 0.2, 0.1], [0.05, 0.05, 0.9]], np.float32)
    out = apply_temperature(probs, 2.0)
    expected = np.sqrt(probs) / np.sqrt(probs).sum(axis=1, keepdims=True)  # p^(1/T), normalised
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_array_equal(out.argmax(1), probs.argmax(1))
    p = np.array([0.01, 0.3, 0.5, 0.8, 1.0], np.float32)  # 1.0: a saturated softmax stays finite
    calibrated = apply_temperature(p, 3.0)
    assert np.all(np.diff(calibrated) > 0) and calibrated[2] == pytest.approx(0.5) and np.isfinite(calibrated).all()
    np.testing.assert_array_equal(apply_temperature(p, None), p)
    assert apply_temperature(np.float32([0.8]), 3.0)[0] == pytest.approx(_sigmoid(_logit(0.8) / 3), rel=1e-6)


def test_a_part_model_is_fitted_on_its_studies_mean_probability():
    # Two images per study; the study's probability is the mean of its images', as the study rule reads it.
    p, y = _calibrated_draw(600, seed=2)
    confident = _sigmoid(4 * _logit(np.repeat(p, 2)))
    groups = np.repeat(np.arange(600), 2)
    fitted = fit_temperature(confident, np.repeat(y, 2), groups=groups)
    assert fitted["unit"] == "studies" and fitted["n"] == 600 and fitted["temperature"] > 2


def test_a_hold_out_of_one_class_or_too_few_studies_is_not_fitted_and_says_why():
    one_class = fit_temperature(np.full(50, 0.7), np.ones(50, int))
    assert one_class["temperature"] is None and "two classes" in one_class["reason"]
    few = fit_temperature(np.array([0.2, 0.9, 0.4]), np.array([0, 1, 1]))
    assert few["temperature"] is None and "3 images" in few["reason"]


@pytest.mark.corpus("C3")
def test_twelve_hold_out_studies_get_no_temperature_however_badly_calibrated():
    # The wrist of the issue: 12 studies (6 per class), scores that a temperature of 0.05 would "fix".
    p = np.repeat([0.45, 0.55], 6)
    y = np.repeat([0, 1], 6)
    fitted = fit_temperature(np.repeat(p, 2), np.repeat(y, 2), groups=np.repeat(np.arange(12), 2))
    assert fitted["temperature"] is None
    assert "12 studies" in fitted["reason"] and f"at least {MIN_PER_CLASS} studies of each" in fitted["reason"]


def test_a_temperature_that_worsens_cross_validated_nll_is_not_applied():
    # Calibrated scores: whatever T the hold-out fits is noise, and out of sample it can only hurt.
    p, y = _calibrated_draw(60, seed=7)
    fitted = fit_temperature(p, y)
    before, after = cross_validated_nll(p, y)
    assert after >= before  # this draw's fitted T does not help out of sample...
    assert fitted["temperature"] is None and "did not lower the cross-validated" in fitted["reason"]  # ...so it is not kept
    assert fitted["cv_nll_after"] == pytest.approx(after) and fitted["cv_nll_before"] == pytest.approx(before)


def test_the_prior_keeps_a_small_hold_out_away_from_the_bounds():
    # Perfectly separated studies: maximum likelihood alone drives T to its lower bound.
    y = np.repeat([0, 1], MIN_PER_CLASS)
    p = np.where(y == 1, 0.6, 0.4)
    fitted = fit_temperature(p, y)
    t = fitted["temperature"] if fitted["temperature"] is not None else fitted["fitted"]
    assert T_BOUNDS[0] * 1.5 < t < 1  # sharpened, but not to the bound
    assert abs(np.log(t)) < 4 * LOG_T_PRIOR_SD


def test_cross_validation_folds_hold_whole_patients():
    from bonenet.scoring.calibration import _folds

    patients = np.repeat(np.arange(50), 3)  # three studies per patient
    fold = _folds(patients, len(patients), 5, seed=3)
    assert all(len(set(fold[patients == q])) == 1 for q in range(50))  # a patient never straddles two folds
    assert sorted(np.bincount(fold)) == [30] * 5  # and the folds are even, in patients


def test_ece_ci_without_resamples_or_rows_is_nan_not_an_error():
    assert np.isnan(ece_ci([0, 1, 1], [0.2, 0.6, 0.9], n_boot=0)).all()
    assert np.isnan(ece_ci([], [], n_boot=100)).all()


def test_ece_uses_the_bins_of_sklearns_calibration_curve():
    p, y = _calibrated_draw(500, seed=4)
    p = _sigmoid(3 * _logit(p))
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10)
    counts = np.histogram(p, np.linspace(0, 1, 11))[0]
    expected = np.sum(counts[counts > 0] / len(p) * np.abs(prob_true - prob_pred))
    assert ece(y, p) == pytest.approx(expected)
    assert ece([1, 0], [1.0, 0.0]) == 0 and np.isnan(ece([], []))


def test_ece_ci_brackets_the_ece_and_resamples_whole_patients():
    p, y = _calibrated_draw(400, seed=5)
    p = _sigmoid(2 * _logit(p))
    lo, hi = ece_ci(y, p, n_boot=400, seed=1)
    assert lo < ece(y, p) < hi
    # The same rows twice, each pair one patient: the pairs move together, so the interval is as wide.
    doubled = ece_ci(np.repeat(y, 2), np.repeat(p, 2), groups=np.repeat(np.arange(400), 2), n_boot=400, seed=1)
    assert doubled == pytest.approx([lo, hi], abs=0.02)
    naive = ece_ci(np.repeat(y, 2), np.repeat(p, 2), n_boot=400, seed=1)
    assert naive[1] - naive[0] < 0.85 * (hi - lo)  # rows as independent: too narrow
