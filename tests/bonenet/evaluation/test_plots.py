"""Evaluation figures (`bonenet.evaluation.plots`): what each one shows, from a small known evaluation."""

import numpy as np
import pandas as pd
import pytest

from bonenet.evaluation import plots
from bonenet.evaluation.baselines import STANFORD_KAPPA


def _metrics(kappa=0.5, ci=(0.2, 0.8)):
    return {"tp": 3, "fn": 1, "fp": 2, "tn": 4, "kappa": kappa, "kappa_ci95": list(ci)}


def test_the_confusion_matrix_writes_counts_and_shades_by_row_share():
    fig = plots.confusion_figure([[8, 2], [1, 9]], ["hand", "wrist"], "Router")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["8", "2", "1", "9"]
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.8, 0.2], [0.1, 0.9]])


def test_the_kappa_figure_puts_each_part_beside_stanford_and_an_undefined_kappa_at_zero():
    study = {"XR_HAND": _metrics(), "XR_WRIST": _metrics(None, (None, None)), "overall": _metrics(0.4)}
    ax = plots.kappa_figure(study, ["XR_HAND", "XR_WRIST"]).axes[0]
    heights = [bar.get_height() for bar in ax.patches]  # BoneNet's three bars, then Stanford's
    assert heights[:3] == [0.5, 0.0, 0.4]
    assert heights[3:] == [STANFORD_KAPPA[k] for k in ("XR_HAND", "XR_WRIST", "overall")]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["hand", "wrist", "overall"]


def test_roc_curves_name_each_parts_auroc():
    studies = pd.DataFrame({"part_true": ["XR_HAND"] * 4 + ["XR_WRIST"] * 4, "label": [0, 0, 1, 1] * 2,
                            "score": [0.1, 0.4, 0.35, 0.8, 0.1, 0.2, 0.3, 0.4]})
    legend = [t.get_text() for t in plots.roc_figure(studies, ["XR_HAND", "XR_WRIST"]).axes[0].get_legend().get_texts()]
    assert any("hand" in t and "0.75" in t for t in legend) and any("wrist" in t and "1.00" in t for t in legend)


def test_every_evaluation_plot_is_written(tmp_path):
    study = {"XR_HAND": _metrics(), "overall": _metrics()}
    calibration = {"ece_before": 0.3, "ece_before_ci95": [0.2, 0.4], "ece_after": 0.1, "ece_after_ci95": [0.05, 0.2],
                   "bins": 10, "n": 4}
    metrics = {"study": study, "router": {"labels": ["XR_HAND"], "confusion": [[5]], "study_confusion": [[2]]},
               "calibration": {"XR_HAND": calibration, "overall": calibration}}
    studies = pd.DataFrame({"part_true": ["XR_HAND"] * 4, "label": [0, 0, 1, 1], "score": [0.1, 0.4, 0.35, 0.8],
                            "score_uncalibrated": [0.01, 0.3, 0.2, 0.95]})
    written = plots.write_evaluation_plots(metrics, studies, tmp_path)
    assert sorted(p.name for p in map(__import__("pathlib").Path, written)) == sorted(
        ["router_confusion.png", "router_confusion_studies.png", "part_confusion.png", "roc.png",
         "kappa_vs_stanford.png", "reliability.png"])
    assert all((tmp_path / name).stat().st_size > 5000 for name in ("roc.png", "kappa_vs_stanford.png"))


def test_the_reliability_diagram_shows_both_curves_with_their_ece_and_ci():
    calibration = {"ece_before": 0.312, "ece_before_ci95": [0.2, 0.4], "ece_after": 0.051, "ece_after_ci95": [0.01, 0.09],
                   "bins": 10, "n": 6}
    studies = pd.DataFrame({"label": [0, 0, 1, 1, 0, 1], "score": [0.2, 0.3, 0.6, 0.7, 0.4, 0.8],
                            "score_uncalibrated": [0.02, 0.1, 0.9, 0.97, 0.2, 0.99]})
    fig = plots.reliability_figure(studies, calibration, "Reliability: hand")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "before calibration: ECE 0.312 [0.200, 0.400]" in legend
    assert "after calibration: ECE 0.051 [0.010, 0.090]" in legend
    before = next(line for line in fig.axes[0].lines if line.get_label().startswith("before"))
    from sklearn.calibration import calibration_curve

    _, mean_p = calibration_curve(studies["label"], studies["score_uncalibrated"], n_bins=10)
    assert before.get_linestyle() == "--" and list(before.get_xdata()) == pytest.approx(list(mean_p))
