"""Evaluation figures: router confusion, per-part confusion, ROC curves, kappa against Stanford, reliability."""

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

from bonenet.evaluation.baselines import STANFORD_KAPPA
from bonenet.evaluation.figures import save_figure
from bonenet.parts import short_name


def confusion_figure(matrix, labels, title, normalize=True):
    """A labelled confusion matrix (rows: truth, columns: prediction); counts in the cells."""
    matrix = np.asarray(matrix, float)
    shown = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1) if normalize else matrix
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(labels), 0.8 + 0.7 * len(labels)))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center",
                    color="white" if shown[i, j] > 0.6 else "black", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class" if normalize else "count")
    fig.tight_layout()
    return fig


def part_confusions_figure(study_metrics, parts):
    """2×2 study-level confusion matrices, one panel per part."""
    cols = 4
    rows = max(1, -(-len(parts) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, part in zip(axes.ravel(), parts, strict=False):
        m = study_metrics[part]
        cm = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])
        ax.axis("on")
        ax.imshow(cm / max(cm.sum(), 1), cmap="Blues", vmin=0, vmax=1)
        for i in range(2):
            for j in range(2):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=12)
        ax.set_xticks([0, 1], ["normal", "abnormal"])
        ax.set_yticks([0, 1], ["normal", "abnormal"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        kappa = m["kappa"]
        ax.set_title(f"{short_name(part)} (κ={'n/a' if kappa is None else f'{kappa:.2f}'})")
    fig.suptitle("Study-level confusion per part (routed pipeline)")
    fig.tight_layout()
    return fig


def roc_figure(studies, parts, title="ROC per part (study level)"):
    """ROC curves per part, plus overall when there are several parts, with AUROC in the legend."""
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for part in [*parts, "overall"] if len(parts) > 1 else parts:
        rows = studies if part == "overall" else studies[studies["part_true"] == part]
        rows = rows[np.isfinite(rows["score"])]
        if rows["label"].nunique() < 2:
            continue
        fpr, tpr, _ = roc_curve(rows["label"], rows["score"])
        from sklearn.metrics import auc

        style = {"color": "black", "lw": 2.5} if part == "overall" else {"lw": 1.3}
        ax.plot(fpr, tpr, label=f"{short_name(part) if part != 'overall' else 'overall'} ({auc(fpr, tpr):.3f})", **style)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 − specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (true-positive rate)")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title="part (AUROC)", loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no ROC curve: one class only", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def pr_figure(rows, title):
    """Precision-recall curve for one table of scored studies, as steps, with average precision."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    rows = rows[np.isfinite(rows["score"])]
    if rows["label"].nunique() == 2:
        precision, recall, _ = precision_recall_curve(rows["label"], rows["score"])
        ap = average_precision_score(rows["label"], rows["score"])
        # Steps, not lines: interpolating between operating points overstates precision.
        ax.step(recall, precision, where="post", label=f"studies (AP {ap:.3f})")
        ax.axhline(rows["label"].mean(), ls=":", color="grey", label="prevalence")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no precision-recall curve: one class only", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("sensitivity (recall)")
    ax.set_ylabel("precision")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def kappa_figure(study_metrics, parts):
    """Per-part study kappa with bootstrap 95% CI beside the Stanford baseline."""
    keys = [*parts, "overall"]
    ours = np.array([np.nan if study_metrics[k]["kappa"] is None else study_metrics[k]["kappa"] for k in keys])
    ci = np.array([[np.nan if v is None else v for v in study_metrics[k]["kappa_ci95"]] for k in keys])
    err = np.abs(np.vstack([ours - ci[:, 0], ci[:, 1] - ours]))
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.bar(x - 0.2, np.nan_to_num(ours), 0.4, yerr=np.nan_to_num(err), capsize=3, label="BoneNet (95% bootstrap CI)")
    ax.bar(x + 0.2, [STANFORD_KAPPA[k] for k in keys], 0.4, label="Stanford MURA baseline (test set)")
    ax.set_xticks(x, [short_name(k) if k != "overall" else "overall" for k in keys])
    ax.set_ylabel("Cohen's kappa (study level)")
    ax.set_ylim(min(0, np.nanmin(ci) if np.isfinite(ci).any() else 0) - 0.05, 1.05)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_title("Per-part kappa against the Stanford baseline")
    # Below the axes, so that it never covers a bar.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def reliability_figure(rows, calibration, title):
    """Reliability diagram of one table of scored studies, before and after calibration (scikit-learn's
    `CalibrationDisplay`, uniform bins), with each curve's ECE and 95% cluster-bootstrap CI in the legend.

    Args:
        rows: studies with `label`, `score` (calibrated) and `score_uncalibrated`.
        calibration: the part's entry of `metrics["calibration"]` (ECE, CI, bins).
    """
    from sklearn.calibration import CalibrationDisplay

    fig, ax = plt.subplots(figsize=(5.5, 5))
    rows = rows[np.isfinite(rows["score"]) & np.isfinite(rows["score_uncalibrated"])]
    if rows.empty:
        ax.text(0.5, 0.5, "no scored studies", ha="center", va="center", transform=ax.transAxes)
    for when, column, style in (("before", "score_uncalibrated", {"color": "tab:orange", "ls": "--"}),
                                ("after", "score", {"color": "tab:blue"})):
        if rows.empty:
            break
        lo, hi = calibration[f"ece_{when}_ci95"]
        CalibrationDisplay.from_predictions(
            rows["label"], rows[column], n_bins=calibration["bins"], ax=ax, **style,
            name=f"{when} calibration: ECE {calibration[f'ece_{when}']:.3f} [{lo:.3f}, {hi:.3f}]")
    ax.set_xlabel("mean p(abnormal) in the bin (study level)")
    ax.set_ylabel("share of abnormal studies in the bin")
    ax.set_title(title)
    # Lower right: the corner a reliability curve reaches least (a high mean p with few abnormal studies).
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def write_evaluation_plots(metrics, studies, out_dir):
    """Writes every evaluation PNG into `out_dir`; returns their paths."""
    parts = [p for p in metrics["study"] if p != "overall"]
    router = metrics["router"]
    labels = [short_name(p) for p in router["labels"]]
    figures = {
        "router_confusion.png": confusion_figure(router["confusion"], labels, "Router confusion (images)"),
        "router_confusion_studies.png": confusion_figure(router["study_confusion"], labels, "Router confusion (studies)"),
        "part_confusion.png": part_confusions_figure(metrics["study"], parts),
        "roc.png": roc_figure(studies, parts),
        "kappa_vs_stanford.png": kappa_figure(metrics["study"], parts),
        "reliability.png": reliability_figure(studies, metrics["calibration"]["overall"],
                                              "Reliability, all parts (study level)"),
    }
    return [save_figure(fig, f"{out_dir}/{name}") for name, fig in figures.items()]
