"""What the report notebooks show, as functions: tables, curves and galleries from an `evaluate` folder.

The notebooks in `notebooks/` only call these; `run_reports` executes them head-less with papermill
and converts each to HTML.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bonenet import baselines
from bonenet.parts import PARTS, parse_part, short_name

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ROWS = ("accuracy", "precision", "sensitivity", "specificity", "f1", "kappa", "auroc", "n")


def load(eval_dir):
    """(metrics, studies, images) of an evaluate folder; see `load_evaluation`."""
    return load_evaluation(eval_dir)


def load_evaluation(eval_dir):
    """Reads an `evaluate` output folder: (metrics dict, study table, image table).

    Reads files only, so the report's kernels never import TensorFlow.
    """
    eval_dir = Path(eval_dir)
    path = eval_dir / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run `evaluate --out {eval_dir}` first")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    return (metrics, pd.read_csv(eval_dir / "study_predictions.csv"),
            pd.read_csv(eval_dir / "image_predictions.csv"))


def _fmt_kappa(m):
    if m is None or m.get("kappa") is None:
        return "n/a"
    lo, hi = m["kappa_ci95"]
    ci = "" if lo is None else f" [{lo:.3f}, {hi:.3f}]"
    return f"{m['kappa']:.3f}{ci}"


def part_table(metrics, part):
    """Metrics of one part (routed, tuned threshold, oracle) beside the published baselines."""
    part = parse_part(part) if part != "overall" else part
    columns = {
        "BoneNet (routed, t=default)": metrics["study"].get(part),
        "BoneNet (routed, t tuned on hold-out)": metrics.get("study_tuned", {}).get(part),
        "BoneNet (true part given)": metrics["oracle"].get(part),
    }
    table = {}
    for name, m in columns.items():
        table[name] = {r: (_fmt_kappa(m) if r == "kappa" else (None if m is None else m.get(r))) for r in ROWS}
    table["Stanford DenseNet-169 (test)"] = {r: None for r in ROWS} | {"kappa": baselines.STANFORD_KAPPA.get(part)}
    patel = baselines.PATEL.get(part, {})
    table["Patel et al. EfficientNetB0"] = {r: patel.get(r) for r in ROWS}
    return pd.DataFrame(table).loc[list(ROWS)]


def overview_table(metrics):
    """One row per part: studies, kappa with CI, AUROC, sensitivity, specificity, and Stanford's kappa."""
    rows = []
    for part in [*PARTS, "overall"]:
        m = metrics["study"].get(part)
        if m is None:
            rows.append({"part": short_name(part), "studies": 0, "kappa [95% CI]": "not scored"})
            continue
        rows.append({
            "part": short_name(part) if part != "overall" else "overall",
            "studies": m["n"],
            "kappa [95% CI]": _fmt_kappa(m),
            "oracle kappa": _fmt_kappa(metrics["oracle"].get(part)),
            "AUROC": m["auroc"],
            "sensitivity": m["sensitivity"],
            "specificity": m["specificity"],
            "Stanford kappa": baselines.STANFORD_KAPPA[part],
        })
    return pd.DataFrame(rows).set_index("part")


def threshold_sweep(studies, part, thresholds=np.linspace(0.05, 0.95, 19)):
    """Sensitivity, specificity, F1 and kappa of one part's studies at each threshold."""
    from bonenet.metrics import binary_metrics

    rows = studies[(studies["part_true"] == parse_part(part)) & np.isfinite(studies["score"])]
    out = []
    for t in thresholds:
        m = binary_metrics(rows["label"], rows["score"], t, n_boot=0) if len(rows) else {}
        out.append({"threshold": round(float(t), 3), **{k: m.get(k) for k in ("sensitivity", "specificity", "f1", "kappa")}})
    return pd.DataFrame(out).set_index("threshold")


def part_studies(studies, part):
    """The scored studies whose true part is `part`."""
    return studies[(studies["part_true"] == parse_part(part)) & np.isfinite(studies["score"])]


def gallery(studies, images, part, kind, n=6):
    """A figure of the most confident true positives (`tp`), false positives (`fp`) or false negatives (`fn`).

    One image per study (the one with the highest p(abnormal)), titled with the study's score.
    """
    import matplotlib.pyplot as plt

    from bonenet.imageio import ImageReadError, load_gray

    rows = part_studies(studies, part)
    pred = rows["pred"] == 1
    pick = {"tp": pred & (rows["label"] == 1), "fp": pred & (rows["label"] == 0), "fn": ~pred & (rows["label"] == 1)}
    if kind not in pick:
        raise ValueError(f"kind must be tp, fp or fn, got {kind!r}")
    chosen = rows[pick[kind]].sort_values("score", ascending=(kind == "fn")).head(n)
    fig, axes = plt.subplots(1, max(1, len(chosen)), figsize=(3 * max(1, len(chosen)), 3.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if chosen.empty:
        axes[0, 0].text(0.5, 0.5, f"no {kind.upper()} studies", ha="center", va="center")
    for ax, study in zip(axes.ravel(), chosen.itertuples(), strict=False):
        imgs = images[images["study"] == study.study].sort_values("score", ascending=False)
        try:
            ax.imshow(load_gray(imgs["path"].iloc[0]), cmap="gray")
        except (ImageReadError, IndexError) as exc:
            ax.text(0.5, 0.5, f"image unavailable\n{exc}", ha="center", va="center", fontsize=6, wrap=True)
        ax.set_title(f"{study.study.split('/')[2]}\np(abnormal)={study.score:.2f}", fontsize=8)
    names = {"tp": "true positives", "fp": "false positives", "fn": "false negatives"}
    fig.suptitle(f"{short_name(parse_part(part))}: most confident {names[kind]}")
    fig.tight_layout()
    return fig


def run_reports(eval_dir, out_dir, parts=None, timeout=600):
    """Executes the notebooks head-less on an evaluate folder; writes one HTML per part plus overview.html.

    Returns:
        The HTML paths written.
    """
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    eval_dir, out_dir = Path(eval_dir).resolve(), Path(out_dir)
    metrics, _, _ = load_evaluation(eval_dir)
    scored = [p for p in PARTS if p in metrics["study"]]
    parts = scored if parts is None else [parse_part(p) for p in parts]
    if not (NOTEBOOKS / "part_report.ipynb").is_file():
        raise FileNotFoundError(f"{NOTEBOOKS}: report notebooks not found; install bonenet from its source tree")
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [("overview", "overview.ipynb", {"eval_dir": str(eval_dir)})]
    jobs += [(f"part_{short_name(p)}", "part_report.ipynb", {"eval_dir": str(eval_dir), "part": p}) for p in parts]
    exporter = HTMLExporter(exclude_input=True)
    written = []
    for name, notebook, params in jobs:
        executed = out_dir / f"{name}.ipynb"
        papermill.execute_notebook(str(NOTEBOOKS / notebook), str(executed), parameters=params, kernel_name="python3",
                                   progress_bar=False, execution_timeout=timeout, cwd=str(out_dir))
        body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
        html = out_dir / f"{name}.html"
        html.write_text(body, encoding="utf-8")
        written.append(html)
    return written
