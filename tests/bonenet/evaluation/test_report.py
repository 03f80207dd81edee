"""Report pages (`bonenet.evaluation.report`): the tables, links, galleries and warnings the notebooks show.

The rendered pages themselves are read in headless Chromium in tests/bonenet/evaluation/test_evaluate.py.
"""

import json
import shutil

import cv2
import nbformat
import numpy as np
import pandas as pd
import pytest
from conftest import kill_while_writing, run_cli, snapshot

from bonenet.evaluation import report
from bonenet.scoring.study import IMAGE_PREDICTION_COLUMNS, STUDY_PREDICTION_COLUMNS


def _m(kappa, n=10, lo=0.1, hi=0.9):
    return {"n": n, "kappa": kappa, "kappa_ci95": [lo, hi], "auroc": 0.8, "sensitivity": 0.7, "specificity": 0.6}


def test_links_join_the_overview_and_every_part_page_and_mark_the_current_one():
    nav = report.links(["XR_HAND", "XR_WRIST"], here="hand")
    assert '<a href="overview.html">overview</a>' in nav and '<a href="part_wrist.html">wrist</a>' in nav
    assert "<b>hand</b>" in nav and 'href="part_hand.html"' not in nav


def test_the_overview_has_a_row_per_part_with_dashes_where_a_part_was_not_scored():
    metrics = {"study": {"XR_WRIST": _m(0.5), "overall": _m(0.4, 12)},
               "oracle": {"XR_WRIST": _m(0.6), "overall": _m(0.45)}}
    table = report.overview_table(metrics)
    assert list(table.index)[-1] == "overall" and table.index.name is None and len(table) == 8
    assert table.loc["wrist", "kappa [95% CI]"] == "0.500 [0.10, 0.90]"  # every output's format
    assert table.loc["hand", "kappa [95% CI]"] == report.MISSING and table.loc["hand", "studies"] == 0
    assert table.loc["wrist", "Stanford kappa"] == 0.931


def test_the_threshold_sweep_marks_the_default_and_the_tuned_threshold():
    studies = pd.DataFrame({"part_true": "XR_WRIST", "label": [0, 0, 1, 1, 1], "score": [0.1, 0.3, 0.45, 0.6, 0.9]})
    sweep = report.threshold_sweep(studies, "wrist", tuned=0.45)
    assert dict(zip(sweep["threshold"], sweep["mark"], strict=True))[0.5] == "default"
    row = sweep[sweep["mark"] == "tuned"].iloc[0]
    assert row["threshold"] == 0.45 and row["sensitivity"] == 1.0 and row["specificity"] == 1.0


@pytest.mark.parametrize("source, warned", [({"synthetic": True, "weights": {"kind": "imagenet"}}, True),
                                            ({"synthetic": False, "weights": {"kind": "none"}}, True),
                                            ({"synthetic": False, "weights": {"kind": "imagenet"}}, False)])
def test_the_banner_warns_unless_real_data_met_an_imagenet_backbone(source, warned):
    text = report.banner({"source": {"data_root": "/data/<x>", **source}})
    assert bool(text) is warned
    assert "<x>" not in text  # paths are escaped into the page


def test_gallery_tiles_say_which_score_was_decided_on(tmp_path):
    (tmp_path / "gallery").mkdir()
    cv2.imwrite(str(tmp_path / "gallery" / "wrist_tp_1.png"), np.zeros((8, 8), np.uint8))
    pd.DataFrame([{"part": "XR_WRIST", "part_pred": "XR_HAND", "kind": "tp", "rank": 1, "study": "/d/p1/s1",
                   "path": "/d/p1/s1/i.png", "study_score": 0.81, "image_score": 0.9, "threshold": 0.4,
                   "file": "gallery/wrist_tp_1.png"}]).to_csv(tmp_path / "gallery.csv", index=False)
    tiles = report.gallery(tmp_path, "wrist", "tp")
    assert "study p(abnormal) <b>0.81</b> (mean of its views; decided on)" in tiles
    assert "this view p(abnormal) 0.90" in tiles and "0.400" in tiles and "(routed to hand)" in tiles
    assert report.gallery(tmp_path, "wrist", "fn") is None
    with pytest.raises(ValueError, match="kind must be tp, fn or fp"):
        report.gallery(tmp_path, "wrist", "tn")


def test_an_evaluate_folder_is_read_or_refused_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json: not found"):
        report.load_evaluation(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"study": {}, "router": {}}))
    pd.DataFrame(columns=STUDY_PREDICTION_COLUMNS).to_csv(tmp_path / "study_predictions.csv", index=False)
    pd.DataFrame(columns=IMAGE_PREDICTION_COLUMNS[:-1]).to_csv(tmp_path / "image_predictions.csv", index=False)
    with pytest.raises(ValueError, match=r"image_predictions.csv: not `evaluate`'s table \(no column score\)"):
        report.load_evaluation(tmp_path)


def test_kernel_stderr_leaves_the_page_and_figures_get_their_headings_as_text():
    node = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("## Kappa per part"),
        nbformat.v4.new_code_cell(outputs=[
            nbformat.v4.new_output("stream", name="stderr", text="a warning\n\n"),
            nbformat.v4.new_output("display_data", data={"image/png": "iVBO\nRw=="}),
        ])])
    assert report._take_stderr(node) == ["a warning"]
    report._describe_images(node)
    [output] = node.cells[1].outputs
    assert output["data"] == {"text/html": '<img src="data:image/png;base64,iVBORw==" alt="Kappa per part">'}


@pytest.mark.corpus("S5")
@pytest.mark.slow  # about 40 s: three report runs
def test_report_killed_mid_write_leaves_the_earlier_pages(evaluated, tmp_path, capsys):
    out = tmp_path / "reports"
    args = ["report", "--eval-dir", evaluated[0], "--out", out]
    assert run_cli(args, capsys)[0] == 0
    before = snapshot(out)
    kill_while_writing(args, out, files=1)
    assert snapshot(out) == before
    assert run_cli([*args, "--part", "wrist"], capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]
    assert sorted(p.name for p in out.glob("*.html")) == ["overview.html", "part_wrist.html"]  # --part: that page only


@pytest.mark.corpus("M9")
@pytest.mark.parametrize("content,problem", [
    ("{bad", "not valid JSON (Expecting property name"),
    ("[1, 2]", "not the metrics.json of `evaluate` (no study, router section)"),
    ('{"study": {}}', "not the metrics.json of `evaluate` (no router section)"),
])
def test_a_bad_metrics_json_is_named_with_its_problem(tmp_path, capsys, content, problem):
    (tmp_path / "metrics.json").write_text(content)
    code, err = run_cli(["report", "--eval-dir", tmp_path, "--out", tmp_path / "r"], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"bonenet report: error: {tmp_path / 'metrics.json'}: "
                                                            f"{problem}"), err


@pytest.mark.corpus("M9")
def test_a_missing_or_foreign_prediction_table_is_named(evaluated, tmp_path, capsys):
    evaluated = evaluated[0]
    copy = shutil.copytree(evaluated, tmp_path / "eval")
    (copy / "study_predictions.csv").write_text("a,b\n1,2\n")
    code, err = run_cli(["report", "--eval-dir", copy, "--out", tmp_path / "r"], capsys)
    assert code == 2 and err == [f"bonenet report: error: {copy / 'study_predictions.csv'}: not `evaluate`'s table "
                                 "(no column study, patient, part_true, part_pred, router_confidence, label, score, "
                                 "threshold, pred)"]
    (copy / "image_predictions.csv").unlink()
    (copy / "study_predictions.csv").write_bytes((evaluated / "study_predictions.csv").read_bytes())
    code, err = run_cli(["report", "--eval-dir", copy, "--out", tmp_path / "r"], capsys)
    assert code == 2 and err[0].startswith(f"bonenet report: error: {copy / 'image_predictions.csv'}: not found")
