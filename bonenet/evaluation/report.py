"""What the report notebooks show, as functions: tables, curves and galleries from an `evaluate` folder.

The notebooks in `notebooks/` only call these; `run_reports` executes them head-less with papermill
and converts each to HTML.
"""

import base64
import html
import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from jupyter_client.manager import AsyncKernelManager
from traitlets import default

from bonenet.configs import DEFAULT_THRESHOLD
from bonenet.evaluation import baselines
from bonenet.files import folder_written_whole
from bonenet.parts import PARTS, parse_part, short_name
from bonenet.progress import Progress
from bonenet.run import provenance
from bonenet.run.model_card import CARD_FILE
from bonenet.scoring.metrics import MISSING, with_interval
from bonenet.scoring.study import IMAGE_PREDICTION_COLUMNS, STUDY_PREDICTION_COLUMNS

log = logging.getLogger(__name__)

# notebooks/ installs as the data-only package bonenet.notebooks (setup.cfg), so a wheel finds it too.
NOTEBOOKS = Path(importlib.util.find_spec("bonenet.notebooks").submodule_search_locations[0])
ROWS = ("accuracy", "precision", "sensitivity", "specificity", "f1", "kappa", "auroc", "n")


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
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file ({exc.reason})") from exc
    missing = sorted({"study", "router"} - set(metrics)) if isinstance(metrics, dict) else ["study", "router"]
    if missing:
        raise ValueError(f"{path}: not the metrics.json of `evaluate` (no {', '.join(missing)} section)")
    tables = []
    for name, columns in (("study_predictions.csv", STUDY_PREDICTION_COLUMNS), ("image_predictions.csv", IMAGE_PREDICTION_COLUMNS)):
        table_path = eval_dir / name
        if not table_path.is_file():
            raise FileNotFoundError(f"{table_path}: not found; run `evaluate --out {eval_dir}` again")
        try:
            table = pd.read_csv(table_path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise ValueError(f"{table_path}: not a readable CSV ({str(exc).strip()})") from exc
        absent = [c for c in columns if c not in table.columns]
        if absent:
            raise ValueError(f"{table_path}: not `evaluate`'s table (no column {', '.join(absent)})")
        tables.append(table)
    return metrics, *tables


GLOSSARY = {
    "studies": "scored studies of this part in the evaluated split",
    "kappa [95% CI]": "Cohen's kappa of the study decisions against the labels, with a 95% cluster-bootstrap "
                      "interval over patients; MURA's headline metric",
    "kappa, true part given": "kappa when each study is sent to its true part's model instead of the routed one; "
                              "the gap to kappa is what routing errors cost",
    "kappa": "Cohen's kappa of the study decisions against the labels (95% cluster-bootstrap interval over "
             "patients in brackets)",
    "AUROC": "area under the ROC curve of the study scores (threshold-free)",
    "sensitivity": "share of abnormal studies called abnormal",
    "specificity": "share of normal studies called normal",
    "precision": "share of studies called abnormal that are abnormal",
    "f1": "harmonic mean of precision and sensitivity",
    "accuracy": "share of studies decided correctly",
    "n": "scored studies",
    "Stanford kappa": "Stanford's DenseNet-169 ensemble on the hidden MURA test set (Rajpurkar et al., 2018); "
                      "for scale only, not the same images",
    "threshold": "a study is abnormal when its score (mean p(abnormal) of its views) reaches it",
    "study p(abnormal)": "the mean p(abnormal) of the study's views under the routed part's model",
    "ECE [95% CI]": "expected calibration error: over 10 equal-width bins of study p(abnormal), the mean gap "
                    "between the share of abnormal studies and the mean p(abnormal), weighted by the bin's "
                    "studies (0 is perfectly calibrated), with a 95% cluster-bootstrap interval over patients",
    "calibration": "the temperature fitted on the training hold-out that divides the part model's logits",
}


def _fmt_kappa(m):
    return MISSING if m is None else with_interval(m.get("kappa"), m.get("kappa_ci95"))


def styled(table):
    """A table as the reports show it: 3 decimals, "—" where a value is missing, no row numbers."""
    style = table.style.format(precision=3, na_rep=MISSING).format_index(str)
    return style.hide(axis="index") if isinstance(table.index, pd.RangeIndex) else style


def glossary(columns):
    """Markdown defining each of `columns` once (those in `GLOSSARY`, matched in any case)."""
    lower = {k.lower(): v for k, v in GLOSSARY.items()}
    return "\n".join(f"- **{c}**: {lower[c.lower()]}" for c in dict.fromkeys(columns) if c.lower() in lower)


def banner(metrics):
    """A Markdown warning when the evaluation is not clinical evidence; "" when it may be."""
    source = metrics.get("source", {})
    weights = source.get("weights", {})
    notes = []
    reasons = provenance.unproven(weights, source.get("synthetic"))
    if provenance.DATA in reasons:
        notes.append(f"the evaluated data (<code>{html.escape(str(source.get('data_root')))}</code>) is synthetic, "
                     "made by <code>make-synthetic</code>")
    if provenance.BACKBONE in reasons:
        notes.append(f"the backbone is not ImageNet-pretrained ({html.escape(str(provenance.backbone_origin(weights)))})")
    if provenance.RADIOGRAPH in reasons:
        notes.append(f"the backbone was {html.escape(str(weights.get('summary', 'pretrained on open radiographs')))}")
    if not notes:
        return ""
    return ("<div style='background:#fde8e8;border:1px solid #e6a1a1;padding:8px 12px;border-radius:6px'>"
            "<b>Not clinical evidence:</b> " + "; ".join(notes) + ". These numbers show that the machinery "
            "works, not how it would do on real radiographs.</div>")


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
    return pd.DataFrame(table).loc[list(ROWS)].rename_axis(None)


def overview_table(metrics):
    """One row per part: studies, kappa with CI, AUROC, sensitivity, specificity, and Stanford's kappa."""
    rows = []
    for part in [*PARTS, "overall"]:
        m = metrics["study"].get(part)
        if m is None:
            rows.append({"part": short_name(part), "studies": 0, "kappa [95% CI]": MISSING})
            continue
        rows.append({
            "part": short_name(part) if part != "overall" else "overall",
            "studies": m["n"],
            "kappa [95% CI]": _fmt_kappa(m),
            "kappa, true part given": _fmt_kappa(metrics["oracle"].get(part)),
            "AUROC": m["auroc"],
            "sensitivity": m["sensitivity"],
            "specificity": m["specificity"],
            "Stanford kappa": baselines.STANFORD_KAPPA[part],
        })
    # No index name: a Styler shows it as a row of its own under the header.
    return pd.DataFrame(rows).set_index("part").rename_axis(None)


def threshold_sweep(studies, part, tuned=None, default=DEFAULT_THRESHOLD, steps=12):
    """Sensitivity, specificity, F1 and kappa of one part's studies at thresholds spread over its scores.

    The grid follows the scores (their quantiles), so scores bunched in 0.45-0.53 still get rows;
    the default and the tuned thresholds are added and marked in the `mark` column.
    """
    from bonenet.scoring.metrics import binary_metrics

    rows = part_studies(studies, part)
    scores = rows["score"].to_numpy(float)
    grid = set(np.round(np.quantile(scores, np.linspace(0, 1, steps)), 3)) if len(scores) else set()
    marks = {round(float(default), 3): "default"}
    if tuned is not None:
        marks[round(float(tuned), 3)] = "tuned" if round(float(tuned), 3) not in marks else "default = tuned"
    out = []
    for t in sorted(grid | set(marks)):
        m = binary_metrics(rows["label"], rows["score"], t, n_boot=0) if len(rows) else {}
        out.append({"threshold": t, "mark": marks.get(t, ""),
                    **{k: m.get(k) for k in ("sensitivity", "specificity", "f1", "kappa")}})
    return pd.DataFrame(out)


def calibration_table(metrics, part):
    """ECE [95% CI] of a part's study scores before and after calibration, and the temperature; None when
    the evaluation has no calibration figures for it."""
    entry = metrics.get("calibration", {}).get(parse_part(part) if part != "overall" else part)
    if entry is None:
        return None
    rows = []
    for when in ("before", "after"):
        lo, hi = entry[f"ece_{when}_ci95"]
        ci = "" if lo is None else f" [{lo:.3f}, {hi:.3f}]"
        rows.append({"": f"{when} calibration", "ECE [95% CI]": f"{entry[f'ece_{when}']:.3f}{ci}",
                     "studies": entry["n"]})
    table = pd.DataFrame(rows).set_index("")
    if "calibration" in entry:
        table["calibration"] = ["none: the model's own softmax", entry["calibration"]]
    return table


def part_studies(studies, part):
    """The scored studies whose true part is `part`."""
    return studies[(studies["part_true"] == parse_part(part)) & np.isfinite(studies["score"])]


GALLERY_TILE_PX = 320


def _text(value):
    """A CSV cell as text: "" for an empty one (pandas reads it as NaN)."""
    return value if isinstance(value, str) else ""


def gallery(eval_dir, part, kind):
    """The heat maps `evaluate` drew for one part's `tp`, `fn` or `fp` studies, as HTML tiles of one size
    with readable captions; None when there are none.

    Each caption says which p(abnormal) is the study's (the mean over its views, which was decided on)
    and which is the shown view's, and the threshold that decided: the one `predict` uses.
    """
    if kind not in ("tp", "fn", "fp"):
        raise ValueError(f"kind must be tp, fn or fp, got {kind!r}")
    path = Path(eval_dir) / "gallery.csv"
    table = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["part", "kind", "file"])
    chosen = table[(table["part"] == parse_part(part)) & (table["kind"] == kind)]
    if chosen.empty:
        return None
    tiles = []
    for row in chosen.itertuples():
        png = base64.b64encode((Path(eval_dir) / row.file).read_bytes()).decode()
        name = "/".join(str(row.study).rstrip("/").split("/")[-2:])
        routed = "" if row.part_pred == row.part else f" (routed to {short_name(row.part_pred)})"
        text = (f"<b>{html.escape(name)}</b><br>study p(abnormal) <b>{row.study_score:.2f}</b> (mean of its views; "
                f"decided on)<br>this view p(abnormal) {row.image_score:.2f}<br>threshold "
                f"<span class=\"bonenet-threshold\">{row.threshold:.3f}</span>{routed}"
                f"<br><i>{html.escape(_text(getattr(row, 'heat_map_note', '')))}</i>")
        tiles.append(
            f'<figure class="bonenet-tile" style="width:{GALLERY_TILE_PX}px;margin:0 12px 12px 0;display:inline-block;'
            f'vertical-align:top"><img src="data:image/png;base64,{png}" alt="{kind.upper()} heat map of '
            f'{html.escape(name)}" style="width:{GALLERY_TILE_PX}px;height:{GALLERY_TILE_PX}px;object-fit:contain;'
            f'background:#000"><figcaption style="font-size:14px;line-height:1.35">{text}</figcaption></figure>')
    return "<div>" + "".join(tiles) + "</div>"


def links(parts, here=None):
    """HTML links between the report's pages: the overview, every part page and the run's model card."""
    pages = [("overview", "overview.html")] + [(short_name(p), f"part_{short_name(p)}.html") for p in parts]
    items = [f"<b>{name}</b>" if name == here else f'<a href="{href}">{name}</a>' for name, href in pages]
    items.append(f'<a href="{CARD_FILE}">model card</a>')
    return '<nav class="bonenet-links">Pages: ' + " · ".join(items) + "</nav>"


class IPCKernelManager(AsyncKernelManager):
    """Report kernels listen on local Unix sockets (over TCP each kernel warns that its traffic is
    unencrypted), and are shut down without an interrupt first."""

    @default("transport")
    def _default_transport(self):
        return "ipc"

    async def _async_interrupt_kernel(self):
        # jupyter_client's shutdown interrupts the kernel before asking it to stop. Papermill shuts
        # a kernel down only once its notebook has run, so there is nothing to interrupt, and the
        # SIGINT only made an idle kernel log "[IPKernelApp] ERROR | KeyboardInterrupt caught in
        # kernel" on the console (2 of 3 demo runs). The shutdown request alone stops it.
        if self.shutting_down:
            return
        await super()._async_interrupt_kernel()


def _describe_images(node):
    """Gives every figure in an executed notebook alt text: the heading of its section.

    Jupyter's figures carry none, so readers with a screen reader would hear nothing useful (and
    nbconvert warns for each page). The figure is re-emitted as an HTML <img> with that text.
    """
    import html

    heading = "BoneNet report figure"
    for cell in node.cells:
        if cell.cell_type == "markdown":
            titles = [line.lstrip("#").strip() for line in cell.source.splitlines() if line.startswith("#")]
            heading = titles[-1] if titles else heading
            continue
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data and "text/html" not in data:
                png = data["image/png"].replace("\n", "")
                data["text/html"] = f'<img src="data:image/png;base64,{png}" alt="{html.escape(heading, quote=True)}">'
                del data["image/png"]


def _take_stderr(node):
    """Removes the stderr streams from an executed notebook and returns their lines."""
    lines = []
    for cell in node.cells:
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                lines.extend(line for line in output.get("text", "").splitlines() if line.strip())
            else:
                kept.append(output)
        if "outputs" in cell:
            cell["outputs"] = kept
    return lines


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
        raise FileNotFoundError(f"{NOTEBOOKS}: report notebooks not found; reinstall bonenet")
    common = {"eval_dir": str(eval_dir), "pages": list(parts)}
    jobs = [("overview", "overview.ipynb", common)]
    jobs += [(f"part_{short_name(p)}", "part_report.ipynb", {**common, "part": p}) for p in parts]
    # No code, no In/Out prompts: the pages are for reading.
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    written = []
    bar = Progress(len(jobs), f"report: rendering {len(jobs)} page(s) into {out_dir}", unit="page")
    with folder_written_whole(out_dir, "overview.html", force=None) as tmp:
        for name, notebook, params in jobs:
            executed = tmp / f"{name}.ipynb"
            papermill.execute_notebook(str(NOTEBOOKS / notebook), str(executed), parameters=params,
                                       kernel_name="python3", progress_bar=False, execution_timeout=timeout,
                                       cwd=str(tmp), kernel_manager_class=IPCKernelManager)
            node = nbformat.read(executed, as_version=4)
            for line in _take_stderr(node):  # warnings go to the console, where they are seen, not into the page
                log.warning(f"{name}: {line}")
            _describe_images(node)
            body, _ = exporter.from_notebook_node(node)
            (tmp / f"{name}.html").write_text(body, encoding="utf-8")
            written.append(out_dir / f"{name}.html")
            bar.update()
        if (eval_dir / CARD_FILE).is_file():  # the pages link to it
            shutil.copyfile(eval_dir / CARD_FILE, tmp / CARD_FILE)
    bar.close()
    return written
